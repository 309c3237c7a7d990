"""Interface of the four exported stage models (names, tensors, shapes): one definition for
ONNX export, the generated ``config.pbtxt`` files, the Python-backend stage models and BLS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS, LATENT_TILE, TILE
from hndsr.models.hndsr import HNDSR
from hndsr_client.interface import Tensor

MAX_BATCH = 512
"""Largest tile batch a stage accepts (the core sends its tiles in chunks: ``bls_chunk``)."""


def stage_tensor(name: str, dims: tuple[int, ...]) -> Tensor:
    """An FP32 stage tensor; ``dims`` per tile (the batch dimension is implicit)."""
    return Tensor(name, "FP32", dims, f"[N, {', '.join(map(str, dims))}]", "one row per tile")


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


_IMG = (3, TILE, TILE)
_LAT = (LATENT_CHANNELS, LATENT_TILE, LATENT_TILE)
_CTX = (CONTEXT_CHANNELS, LATENT_TILE, LATENT_TILE)

STAGE_SPECS: dict[str, StageSpec] = {
    "encoder": StageSpec("encoder", (stage_tensor("IMAGE", _IMG),), (stage_tensor("LATENT", _LAT),)),
    "prior": StageSpec(
        "prior",
        (stage_tensor("LATENT", _LAT), stage_tensor("SCALE", (1,))),
        (stage_tensor("PRIOR", _LAT), stage_tensor("CONTEXT", _CTX)),
    ),
    "unet": StageSpec(
        "unet",
        (
            stage_tensor("LATENT", _LAT),
            stage_tensor("TIMESTEP", (1,)),
            stage_tensor("PRIOR", _LAT),
            stage_tensor("CONTEXT", _CTX),
        ),
        (stage_tensor("VELOCITY", _LAT),),
    ),
    "decoder": StageSpec("decoder", (stage_tensor("LATENT", _LAT),), (stage_tensor("IMAGE", _IMG),)),
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
