"""Interface of the four exported stage models (names, tensors, shapes): one definition for
ONNX export, the generated ``config.pbtxt`` files, the Python-backend stage models and BLS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS, LATENT_TILE, TILE
from hndsr.models.hndsr import HNDSR

MAX_BATCH = 512
"""Largest tile batch a stage accepts; one request carries every tile of an image."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dims: tuple[int, ...]
    """Per-item dims (the batch dimension is implicit)."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


_IMG = (3, TILE, TILE)
_LAT = (LATENT_CHANNELS, LATENT_TILE, LATENT_TILE)
_CTX = (CONTEXT_CHANNELS, LATENT_TILE, LATENT_TILE)

STAGE_SPECS: dict[str, StageSpec] = {
    "encoder": StageSpec("encoder", (TensorSpec("IMAGE", _IMG),), (TensorSpec("LATENT", _LAT),)),
    "prior": StageSpec(
        "prior",
        (TensorSpec("LATENT", _LAT), TensorSpec("SCALE", (1,))),
        (TensorSpec("PRIOR", _LAT), TensorSpec("CONTEXT", _CTX)),
    ),
    "unet": StageSpec(
        "unet",
        (
            TensorSpec("LATENT", _LAT),
            TensorSpec("TIMESTEP", (1,)),
            TensorSpec("PRIOR", _LAT),
            TensorSpec("CONTEXT", _CTX),
        ),
        (TensorSpec("VELOCITY", _LAT),),
    ),
    "decoder": StageSpec("decoder", (TensorSpec("LATENT", _LAT),), (TensorSpec("IMAGE", _IMG),)),
}


class _UNetStage(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, latent: torch.Tensor, timestep: torch.Tensor, prior: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(latent, timestep[:, 0], prior, context)


def stage_module(model: HNDSR, stage: str) -> nn.Module:
    """The PyTorch module whose forward matches ``STAGE_SPECS[stage]`` (inputs in order)."""
    if stage == "unet":
        return _UNetStage(model.unet)
    return getattr(model, stage)


def example_inputs(stage: str, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Plausible random inputs for export tracing and parity checks."""
    out = []
    for spec in STAGE_SPECS[stage].inputs:
        if spec.name == "SCALE":
            out.append(2 + 6 * torch.rand(batch, 1, generator=generator))
        elif spec.name == "TIMESTEP":
            out.append(torch.randint(0, 1000, (batch, 1), generator=generator).float())
        elif spec.name == "IMAGE":
            out.append(torch.rand(batch, *spec.dims, generator=generator))
        else:
            out.append(torch.randn(batch, *spec.dims, generator=generator))
    return tuple(out)
