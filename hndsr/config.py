"""Shared constants: tile geometry, latent layout and request limits (one source of truth)."""

from __future__ import annotations

from dataclasses import dataclass

LATENT_FACTOR = 4
"""HR pixels per latent cell along each axis."""
LATENT_CHANNELS = 32
CONTEXT_CHANNELS = 32

TILE = 256
"""HR tile edge fed to the exported stage models (fixed shape for ONNX/TensorRT)."""
TILE_OVERLAP = 32
"""HR pixels shared by neighbouring tiles, blended with a Hann ramp."""
LATENT_TILE = TILE // LATENT_FACTOR

SCALE_MIN = 2.0
SCALE_MAX = 8.0
STEPS_MAX = 250
DEFAULT_SCALE = 4.0
DEFAULT_STEPS = 4
"""Chosen from the 4/8/20/50-step sweep on val/TEAK (README): best NIQE, least PSNR loss."""
MIN_INPUT_SIDE = 8
MAX_OUTPUT_PIXELS = 16_000_000


@dataclass(frozen=True)
class Limits:
    """Request limits enforced before any heavy work."""

    scale_min: float = SCALE_MIN
    scale_max: float = SCALE_MAX
    steps_max: int = STEPS_MAX
    min_input_side: int = MIN_INPUT_SIDE
    max_output_pixels: int = MAX_OUTPUT_PIXELS


@dataclass
class TrainConfig:
    """Training settings; the defaults are those of the shipped weights."""

    data: str
    out: str = "runs/train"
    val: str | None = None
    ae_steps: int = 1000
    prior_steps: int = 4500
    unet_steps: int = 2500
    batch: int = 16
    patch: int = 128
    prior_patch: int = 256
    lr: float = 2e-4
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 250
    threads: int = 0
    weights_out: str | None = None
