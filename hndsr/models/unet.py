"""Diffusion UNet on the latent grid, conditioned on the FNO context and the timestep."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS
from hndsr.models.blocks import ResBlock, sinusoidal_embedding


class LatentUNet(nn.Module):
    """Predicts v (velocity) for the noisy residual latent ``x_t`` at timestep ``t``."""

    def __init__(
        self,
        channels: tuple[int, ...] = (48, 96, 160),
        latent_channels: int = LATENT_CHANNELS,
        context_channels: int = CONTEXT_CHANNELS,
        emb_dim: int = 256,
        groups: int = 16,
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(latent_channels + context_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(ResBlock(prev, ch, emb_dim, groups))
            prev = ch
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([ResBlock(prev, prev, emb_dim, groups), ResBlock(prev, prev, emb_dim, groups)])
        self.up = nn.ModuleList()
        for ch in reversed(channels):
            self.up.append(ResBlock(prev + ch, ch, emb_dim, groups))
            prev = ch
        self.out_norm = nn.GroupNorm(groups, prev)
        self.out = nn.Conv2d(prev, latent_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(sinusoidal_embedding(timestep, self.emb_dim))
        h = self.stem(torch.cat([latent, context], dim=1))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
