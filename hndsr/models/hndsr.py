"""The full HNDSR model: the four exported stages plus the residual-latent normalisation."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hndsr.models.autoencoder import Decoder, Encoder
from hndsr.models.fno import FNOPrior
from hndsr.models.unet import LatentUNet

STAGES = ("encoder", "prior", "unet", "decoder")


class HNDSR(nn.Module):
    """Container of the stage networks; ``residual_scale`` maps diffused units to latent units."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.prior = FNOPrior()
        self.unet = LatentUNet()
        self.decoder = Decoder()
        self.register_buffer("residual_scale", torch.ones(()))

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in STAGES}

    def save(self, path: str | Path, half: bool = True) -> None:
        """Save all stages to one safetensors file (fp16 by default to keep the repo small)."""
        state = {
            k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in self.state_dict().items()
        }
        save_file(state, str(path), metadata={"format": "hndsr-v1"})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> HNDSR:
        model = cls()
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        model.load_state_dict(state)
        return model.to(device).eval()
