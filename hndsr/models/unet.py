"""Diffusion UNet on the latent grid, conditioned on the structural prior, the FNO context and the timestep."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS
from hndsr.models.blocks import ResBlock, sinusoidal_embedding


class LatentUNet(nn.Module):
    """Predicts v (velocity) for the noisy residual latent ``x_t`` at timestep ``t``.

    The residual is ``z_HR - z0``; the UNet sees ``x_t`` beside the prior ``z0`` itself and the
    FNO context. One downsampling level: the residual holds fine detail, not global layout.
    """

    def __init__(
        self,
        channels: tuple[int, int] = (48, 96),
        latent_channels: int = LATENT_CHANNELS,
        context_channels: int = CONTEXT_CHANNELS,
        emb_dim: int = 128,
        groups: int = 8,
    ) -> None:
        super().__init__()
        c0, c1 = channels
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(2 * latent_channels + context_channels, c0, 3, padding=1)
        self.enc = ResBlock(c0, c0, emb_dim, groups)
        self.down = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.mid = nn.ModuleList([ResBlock(c1, c1, emb_dim, groups), ResBlock(c1, c1, emb_dim, groups)])
        self.dec = ResBlock(c1 + c0, c0, emb_dim, groups)
        self.out_norm = nn.GroupNorm(groups, c0)
        self.out = nn.Conv2d(c0, latent_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, latent: torch.Tensor, timestep: torch.Tensor, prior: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(timestep, self.emb_dim))
        skip = self.enc(self.stem(torch.cat([latent, prior, context], dim=1)), emb)
        h = self.down(skip)
        for block in self.mid:
            h = block(h, emb)
        h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        h = self.dec(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
