"""Autoencoder between RGB pixels and a latent grid at 1/4 of the HR size.

Both halves work on the latent grid only: the encoder starts with a space-to-depth stem
(4x4 pixels -> 48 channels) and the decoder ends with depth-to-space, so no convolution runs
at full resolution. A linear 1x1 path beside the convolutions keeps the pair close to an
invertible re-packing of the pixels, which gives a high reconstruction ceiling.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hndsr.config import LATENT_CHANNELS, LATENT_FACTOR
from hndsr.models.blocks import ResBlock

PACKED = 3 * LATENT_FACTOR**2


def packing_kernel(channels: int = 3, factor: int = LATENT_FACTOR) -> torch.Tensor:
    """One-hot weights [C*f*f, C, f, f] of a stride-``f`` convolution that equals
    ``F.pixel_unshuffle(x, f)`` exactly (output channel c*f*f + i*f + j reads pixel (i, j) of
    channel c; onnxruntime runs it about 4x faster than the 6-D Transpose pixel-unshuffle exports to)."""
    packed = channels * factor * factor
    return torch.eye(packed).view(packed, channels, factor, factor)


class Encoder(nn.Module):
    """RGB in [0, 1], shape [B, 3, H, W] -> latent [B, C, H/4, W/4]."""

    def __init__(self, width: int = 48, latent_channels: int = LATENT_CHANNELS, blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(PACKED, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(width, width) for _ in range(blocks))
        self.head = nn.Conv2d(width, latent_channels, 3, padding=1)
        self.linear = nn.Conv2d(PACKED, latent_channels, 1)
        self.register_buffer("pack", packing_kernel(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        packed = F.conv2d(image * 2 - 1, self.pack, stride=LATENT_FACTOR)
        h = self.stem(packed)
        for block in self.blocks:
            h = block(h)
        return self.linear(packed) + self.head(F.silu(h))


class Decoder(nn.Module):
    """Latent [B, C, h, w] -> RGB [B, 3, 4h, 4w] in roughly [0, 1]."""

    def __init__(self, width: int = 48, latent_channels: int = LATENT_CHANNELS, blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(width, width) for _ in range(blocks))
        self.head = nn.Conv2d(width, PACKED, 3, padding=1)
        self.linear = nn.Conv2d(latent_channels, PACKED, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.stem(latent)
        for block in self.blocks:
            h = block(h)
        packed = self.linear(latent) + self.head(F.silu(h))
        return F.pixel_shuffle(packed, LATENT_FACTOR) * 0.5 + 0.5
