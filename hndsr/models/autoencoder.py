"""Autoencoder between RGB pixels and a latent grid at 1/4 of the HR size."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hndsr.config import LATENT_CHANNELS, LATENT_FACTOR
from hndsr.models.blocks import ResBlock


class Encoder(nn.Module):
    """RGB in [0, 1], shape [B, 3, H, W] -> latent [B, C, H/4, W/4]."""

    def __init__(self, width: int = 96, latent_channels: int = LATENT_CHANNELS, blocks: int = 2) -> None:
        super().__init__()
        packed = 3 * LATENT_FACTOR**2
        self.stem = nn.Conv2d(packed, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(width, width) for _ in range(blocks))
        self.head = nn.Conv2d(width, latent_channels, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.stem(F.pixel_unshuffle(image * 2 - 1, LATENT_FACTOR))
        for block in self.blocks:
            h = block(h)
        return self.head(F.silu(h))


class Decoder(nn.Module):
    """Latent [B, C, h, w] -> RGB [B, 3, 4h, 4w] in roughly [0, 1]."""

    def __init__(self, width: int = 96, latent_channels: int = LATENT_CHANNELS, blocks: int = 3) -> None:
        super().__init__()
        packed = 3 * LATENT_FACTOR**2
        self.stem = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(width, width) for _ in range(blocks))
        self.head = nn.Conv2d(width, packed, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.stem(latent)
        for block in self.blocks:
            h = block(h)
        return F.pixel_shuffle(self.head(F.silu(h)), LATENT_FACTOR) * 0.5 + 0.5
