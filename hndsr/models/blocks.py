"""Small building blocks shared by the stage networks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual path and optional per-channel FiLM."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int = 0, groups: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels) if groups else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels) if groups else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels) if emb_dim else None
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            gamma, beta = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + gamma) + beta
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a [B] or [B, 1] tensor of scalars."""
    values = values.reshape(-1, 1).float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device) / half)
    args = values * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)
