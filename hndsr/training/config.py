"""Settings of the three-phase training run (``hndsr train phases``)."""

from __future__ import annotations

from dataclasses import dataclass

from hndsr.config import TILE


@dataclass
class TrainConfig:
    """Training settings (two phases: regression, then diffusion); see ``hndsr.training.trainer``.

    A phase ends after ``*_steps`` steps or ``*_seconds`` of wall time, whichever comes first
    (0 seconds = no time limit); the learning-rate schedule follows that progress.
    """

    data: str
    """Training image folders, comma-separated (a folder named twice counts twice)."""
    out: str = "runs/train"
    val: str | None = None
    init: str | None = None
    """Start from these weights (e.g. the committed ones) and the phase/step in their metadata."""
    restart_phase: str | None = None
    """With ``init``: start this phase from step 0 instead (fine-tuning)."""
    stop_after: str | None = None
    """Stop after this phase (a fine-tune of the prior stops after ``degrid``: the UNet is kept)."""
    augment: bool = True
    """Random shrink of the HR images and colour-channel shuffles (see ``PatchBank``)."""
    regression_steps: int = 40_000
    diffusion_steps: int = 20_000
    degrid_steps: int = 3_000
    regression_seconds: float = 0.0
    diffusion_seconds: float = 0.0
    degrid_seconds: float = 0.0
    batch: int = 16
    patch: int = TILE
    lr: float = 1e-3
    diffusion_lr: float = 5e-4
    degrid_lr: float = 1e-4
    harmonic_weight: float = 0.2
    """Weight of the latent-grid harmonic error (relative to MSE) in the degrid phase."""
    mse_tail: float = 0.2
    """Final fraction of the regression phase trained with MSE instead of L1."""
    ema: float = 0.999
    max_timestep: int = 700
    """The UNet is trained on timesteps below this (sampling starts at or below it)."""
    start_timestep: int = 119
    """Where the generative path's DDIM chain starts, stored in the weights (119: the sweep after the
    adversarial fine-tune, docs/training.md)."""
    seed: int = 0
    checkpoint_seconds: float = 600.0
    eval_seconds: float = 300.0
    threads: int = 0
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    weights_out: str | None = None
