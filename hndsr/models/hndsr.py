"""The full HNDSR model: the four exported stages plus the sampling constants learned with them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS, LATENT_FACTOR, NUM_TRAIN_TIMESTEPS, STAGES, TILE
from hndsr.models.autoencoder import Decoder, Encoder
from hndsr.models.fno import FNOPrior
from hndsr.models.unet import LatentUNet

FORMAT = "hndsr-v2"


def model_facts() -> dict[str, str]:
    """What the weights assume about the code; stored in the safetensors metadata, checked at load."""
    return {
        "format": FORMAT,
        "latent_factor": str(LATENT_FACTOR),
        "latent_channels": str(LATENT_CHANNELS),
        "context_channels": str(CONTEXT_CHANNELS),
        "tile": str(TILE),
        "schedule": "cosine",
        "prediction": "v",
        "num_train_timesteps": str(NUM_TRAIN_TIMESTEPS),
        "diffusion": "residual z_HR - z0, SDEdit-style start",
    }


class HNDSR(nn.Module):
    """Container of the stage networks.

    The FNO prior has ``prior_width`` residual and ``prior_hidden`` per-block channels (the served
    weights: 48/32, distilled from a 64/64 prior by ``hndsr.training.distill``).
    ``residual_scale`` maps diffused units to latent units; ``start_timestep`` is the DDIM
    timestep the generative path starts from (its perception-distortion strength);
    ``texture_floor`` and ``texture_gain`` the texture gate's (``hndsr.inference.texture_gate``; 0 and 1 =
    off, the values of files saved before the gate existed).
    """

    def __init__(self, prior_width: int = 48, prior_hidden: int | None = 32) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.prior = FNOPrior(width=prior_width, hidden=prior_hidden)
        self.unet = LatentUNet()
        self.decoder = Decoder()
        self.register_buffer("residual_scale", torch.ones(()))
        self.register_buffer("start_timestep", torch.tensor(NUM_TRAIN_TIMESTEPS - 1.0))
        self.register_buffer("texture_floor", torch.zeros(()))
        self.register_buffer("texture_gain", torch.ones(()))

    def architecture(self) -> dict[str, int]:
        """The size choices stored with the weights (``load`` rebuilds the model from them)."""
        block = self.prior.blocks[0]
        return {"prior_width": block.local.in_channels, "prior_hidden": block.local.out_channels}

    @classmethod
    def architecture_of(cls, path: str | Path) -> dict[str, int]:
        """The architecture a weights file was saved with (files without it hold the original
        64-channel prior)."""
        meta = cls.metadata(path)
        width = int(meta.get("prior_width", 64))
        return {"prior_width": width, "prior_hidden": int(meta.get("prior_hidden", width))}

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in STAGES}

    def save(self, path: str | Path, half: bool = True, extra: dict[str, str] | None = None) -> None:
        """Save all stages to one safetensors file (fp16 by default to keep the repo small)."""
        state = {
            k: (v.half() if half and v.is_floating_point() and v.dim() > 0 else v).contiguous()
            for k, v in self.state_dict().items()
        }
        arch = {k: str(v) for k, v in self.architecture().items()}
        save_file(state, str(path), metadata={**model_facts(), **arch, **(extra or {})})

    @staticmethod
    def metadata(path: str | Path) -> dict[str, str]:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> HNDSR:
        meta = cls.metadata(path)
        expected = model_facts()
        wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            detail = ", ".join(f"{k}: file {a!r} != code {b!r}" for k, (a, b) in wrong.items())
            raise ValueError(f"{path} does not match this code ({detail})")
        model = cls(**cls.architecture_of(path))
        state = {k: v.float() for k, v in load_file(str(path)).items()}
        state.setdefault("texture_floor", torch.zeros(()))
        state.setdefault("texture_gain", torch.ones(()))
        model.load_state_dict(state)
        return model.to(device).eval()
