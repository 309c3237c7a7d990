"""The HNDSR inference pipeline, shared by PyTorch evaluation and the Triton orchestrator.

Stages run through a ``StageRunner`` (PyTorch modules or Triton BLS requests); the tiling,
the DDIM loop with one batched UNet call per step, the blending and the stitching live here.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from torch.nn import functional as F

from hndsr.config import (
    DEFAULT_SCALE,
    DEFAULT_STEPS,
    LATENT_CHANNELS,
    LATENT_FACTOR,
    MIN_MODEL_SCALE,
    TILE,
    TILE_OVERLAP,
    Limits,
)
from hndsr.inference.degrid import degridded_output
from hndsr.inference.diffusion import DDIMScheduler
from hndsr.inference.imaging import dihedral_view, to_uint8, upsample
from hndsr.inference.texture_gate import texture_gate
from hndsr.inference.tiling import TilePlan
from hndsr_client.image_io import output_size
from hndsr_client.interface import ENSEMBLE, ETA, TOO_LARGE
from hndsr_client.interface import model_scale as served_model_scale


class StageRunner(Protocol):
    """Runs the four exported stages on batches of tiles."""

    device: torch.device

    def encode(self, image: torch.Tensor) -> torch.Tensor: ...

    def prior(self, latent: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def denoise(
        self, latent: torch.Tensor, timestep: torch.Tensor, prior: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


class InvalidRequest(ValueError):
    """A request parameter is outside its limit; the message names the field and the limit."""


class Cancelled(RuntimeError):
    """The request was cancelled (the client went away, its deadline passed or the server is
    draining); the DDIM loop stopped at the next step."""


@dataclass
class SRParams:
    scale: float = DEFAULT_SCALE
    steps: int = DEFAULT_STEPS
    seed: int = 0
    eta: float = 0.0
    ensemble: int = 1
    """Views averaged (``imaging.dihedral_view``); 1 = the plain model."""


@dataclass(frozen=True)
class Sampling:
    """Constants chosen with the weights: residual latent scale, DDIM start timestep and the
    texture gate's contrast floor and gain (``hndsr.inference.texture_gate``; floor 0 and gain 1 = off)."""

    residual_scale: float
    start_timestep: int
    texture_floor: float = 0.0
    texture_gain: float = 1.0

    @classmethod
    def of(cls, model) -> Sampling:
        return cls(
            float(model.residual_scale),
            int(round(float(model.start_timestep))),
            float(model.texture_floor),
            float(model.texture_gain),
        )

    def to_json(self) -> str:
        """The form the core's Triton config carries (``from_json`` reads it back)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Sampling:
        return cls(**json.loads(text))


@dataclass
class SRResult:
    image: torch.Tensor
    """uint8 [round(s*H), round(s*W), 3]"""
    info: dict = field(default_factory=dict)


def validate(shape: tuple[int, ...], dtype: str, params: SRParams, limits: Limits) -> None:
    """Cheap checks of an SR request; raises ``InvalidRequest`` naming the field and limit."""
    if dtype != "uint8":
        raise InvalidRequest(f"IMAGE must be UINT8, got {dtype}")
    if len(shape) != 3:
        raise InvalidRequest(f"IMAGE must have rank 3 [H, W, 3], got shape {list(shape)}")
    if shape[2] != 3:
        raise InvalidRequest(f"IMAGE must have 3 channels (RGB), got {shape[2]}")
    if min(shape[0], shape[1]) < limits.min_input_side:
        raise InvalidRequest(f"IMAGE sides must be >= {limits.min_input_side} pixels, got {shape[0]}x{shape[1]}")
    if not (math.isfinite(params.scale) and limits.scale_min <= params.scale <= limits.scale_max):
        raise InvalidRequest(f"SCALE must be in [{limits.scale_min:g}, {limits.scale_max:g}], got {params.scale:g}")
    if not 0 <= params.steps <= limits.steps_max:
        raise InvalidRequest(f"STEPS must be in [0, {limits.steps_max}], got {params.steps}")
    if message := ETA.out_of_range(params.eta):
        raise InvalidRequest(message)
    if message := ENSEMBLE.out_of_range(params.ensemble):
        raise InvalidRequest(message)
    out_h, out_w = output_size(shape[0], shape[1], params.scale)
    if out_h * out_w > limits.max_output_pixels:
        raise InvalidRequest(
            f"output {out_h}x{out_w} = {out_h * out_w} pixels {TOO_LARGE} of "
            f"{limits.max_output_pixels} output pixels (IMAGE {shape[0]}x{shape[1]} at SCALE {params.scale:g})"
        )
    work_scale = model_scale(params.scale)
    work_h, work_w = output_size(shape[0], shape[1], work_scale)
    if work_scale != params.scale and work_h * work_w > limits.max_output_pixels:
        raise InvalidRequest(
            f"SCALE {params.scale:g} is computed at {work_scale:g}x and resized: its canvas "
            f"{work_h}x{work_w} = {work_h * work_w} pixels {TOO_LARGE} of {limits.max_output_pixels} "
            f"output pixels (IMAGE {shape[0]}x{shape[1]})"
        )


def model_scale(scale: float) -> float:
    """The scale the model runs at for a requested ``scale`` (``hndsr.config.MIN_MODEL_SCALE``)."""
    return served_model_scale(scale, MIN_MODEL_SCALE)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def canvas_plan(out_h: int, out_w: int, tile: int = TILE, overlap: int = TILE_OVERLAP) -> TilePlan:
    """Tile layout of the HR canvas for an ``out_h`` x ``out_w`` output (padded to the latent grid
    and to at least one tile)."""
    canvas_h = max(tile, _round_up(out_h, LATENT_FACTOR))
    canvas_w = max(tile, _round_up(out_w, LATENT_FACTOR))
    return TilePlan.create(canvas_h, canvas_w, tile, overlap, align=LATENT_FACTOR)


def seeded_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gaussian noise drawn on the CPU (identical on every device), then moved."""
    return torch.randn(shape, generator=generator).to(device)


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def run(self, stage: str, fn: Callable, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000
        return out


def super_resolve(
    image: torch.Tensor,
    params: SRParams,
    runner: StageRunner,
    sampling: Sampling,
    tile: int = TILE,
    overlap: int = TILE_OVERLAP,
    is_cancelled: Callable[[], bool] = lambda: False,
    on_step: Callable[[int, int], None] | None = None,
) -> SRResult:
    """Super-resolve a uint8 [H, W, 3] image (any device) by ``params.scale``.

    Steps 0: decoder(z0), z0 = FNO prior on the encoded bicubic canvas. Steps > 0: DDIM on the
    residual latent, started SDEdit-style at ``sampling.start_timestep`` from noise around z0.
    ``params.ensemble`` > 1 averages that many flipped/transposed views (same seed in each).
    """
    start = time.perf_counter()
    timer = _Timer()
    height, width = image.shape[:2]
    out_h, out_w = output_size(height, width, params.scale)
    lr = image.to(runner.device).permute(2, 0, 1)[None].float() / 255.0
    total, tiles = 0.0, 0
    for view in range(params.ensemble):
        if view and is_cancelled():
            raise Cancelled(f"cancelled after {view} of {params.ensemble} ensemble views")
        progress = None
        if on_step is not None:

            def progress(done: int, steps: int, view: int = view) -> None:
                on_step(view * steps + done, params.ensemble * steps)

        sr, count = _one_view(
            dihedral_view(lr, view), params, runner, sampling, timer, tile, overlap, is_cancelled, progress
        )
        total = total + dihedral_view(sr.clamp(0, 1), view, inverse=True)
        tiles += count
    info = {
        "scale": float(params.scale),
        "steps": int(params.steps),
        "seed": int(params.seed),
        "eta": float(params.eta),
        "ensemble": int(params.ensemble),
        "tiles": tiles,
        "input_size": [int(height), int(width)],
        "output_size": [out_h, out_w],
        "device": str(runner.device),
        "stage_ms": {k: round(v, 2) for k, v in timer.ms.items()},
        "total_ms": round((time.perf_counter() - start) * 1000, 2),
    }
    return SRResult(to_uint8(total / params.ensemble), info)


def _one_view(
    lr: torch.Tensor,
    params: SRParams,
    runner: StageRunner,
    sampling: Sampling,
    timer: _Timer,
    tile: int,
    overlap: int,
    is_cancelled: Callable[[], bool],
    on_step: Callable[[int, int], None] | None,
) -> tuple[torch.Tensor, int]:
    """The model's float output [3, out_h, out_w] for one float LR image [1, 3, h, w], and its tile
    count. Below ``MIN_MODEL_SCALE`` the model runs at that scale and the result is resized down."""
    device = runner.device
    out_h, out_w = output_size(lr.shape[-2], lr.shape[-1], params.scale)
    work_scale = model_scale(params.scale)
    work_h, work_w = output_size(lr.shape[-2], lr.shape[-1], work_scale)
    up = upsample(lr, (work_h, work_w))
    plan = canvas_plan(work_h, work_w, tile, overlap)
    up = F.pad(up, (0, plan.width - work_w, 0, plan.height - work_h), mode="replicate")[0]
    latent_plan = plan.downscaled(LATENT_FACTOR)
    tiles = plan.split(up)

    z_bicubic = timer.run("encoder", runner.encode, tiles)
    scale = torch.full((plan.count, 1), work_scale, device=device)
    z0, context = timer.run("prior", runner.prior, z_bicubic, scale)
    latent = latent_plan.blend(z0)

    scheduler = DDIMScheduler()
    timesteps = scheduler.set_timesteps(params.steps, start=sampling.start_timestep)
    if timesteps:
        z0_tiles = latent_plan.split(latent)
        context = latent_plan.split(latent_plan.blend(context))
        generator = torch.Generator().manual_seed(int(params.seed))
        shape = (LATENT_CHANNELS, latent_plan.height, latent_plan.width)
        # x_start = sqrt(a) * 0 + sqrt(1 - a) * noise: the prior's residual (0) noised to the start.
        sample = seeded_noise(shape, generator, device) * (1 - scheduler.alpha(timesteps[0])) ** 0.5
        for i, t in enumerate(timesteps):
            if is_cancelled():
                raise Cancelled(f"cancelled after {i} of {len(timesteps)} DDIM steps")
            t_batch = torch.full((plan.count,), float(t), device=device)
            v = latent_plan.blend(
                timer.run("unet", runner.denoise, latent_plan.split(sample), t_batch, z0_tiles, context)
            )
            noise = seeded_noise(shape, generator, device) if params.eta > 0 else None
            sample, _ = scheduler.step(v, t, sample, eta=params.eta, noise=noise)
            if on_step is not None:
                on_step(i + 1, len(timesteps))
        latent = (
            latent
            + texture_gate(up, sampling.texture_floor, sampling.texture_gain, params.scale)
            * sample
            / sampling.residual_scale
        )

    decoded = plan.blend(timer.run("decoder", runner.decode, latent_plan.split(latent)))
    sr = degridded_output(decoded, up)[:, :work_h, :work_w]
    if (work_h, work_w) != (out_h, out_w):
        sr = F.interpolate(sr.clamp(0, 1)[None], size=(out_h, out_w), mode="bicubic", antialias=True)[0]
    return sr, plan.count


class TorchRunner:
    """Runs the stages with the PyTorch modules of an ``HNDSR`` model, in chunks of tiles."""

    def __init__(self, model, chunk: int = 16) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.chunk = chunk

    def _chunked(self, fn: Callable, *tensors: torch.Tensor):
        outs = [fn(*(t[i : i + self.chunk] for t in tensors)) for i in range(0, tensors[0].shape[0], self.chunk)]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self._chunked(self.model.encoder, image)

    @torch.no_grad()
    def prior(self, latent: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._chunked(self.model.prior, latent, scale)

    @torch.no_grad()
    def denoise(
        self, latent: torch.Tensor, timestep: torch.Tensor, prior: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        return self._chunked(self.model.unet, latent, timestep, prior, context)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._chunked(self.model.decoder, latent)
