"""Fourier Neural Operator prior: latent of the bicubic canvas + continuous scale -> latent prior and context."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS
from hndsr.models.blocks import sinusoidal_embedding
from hndsr.models.spectral import SpectralConv2d


class FNOBlock(nn.Module):
    """Spectral path + local 3x3 path, FiLM by scale, then a residual 3x3 projection."""

    def __init__(self, width: int, modes: int, emb_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        self.spectral = SpectralConv2d(width, hidden, modes)
        self.local = nn.Conv2d(width, hidden, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * hidden)
        self.out = nn.Conv2d(hidden, width, 3, padding=1)

    def hidden(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The activation the output projection reads (``hndsr.training.distill`` measures it to prune)."""
        gamma, beta = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        return F.gelu((self.spectral(x) + self.local(x)) * (1 + gamma) + beta)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.hidden(x, emb))


class FNOPrior(nn.Module):
    """Maps the encoder's latent of the bicubic canvas [B, C, h, w] and the scale [B, 1] to

    ``prior`` [B, C, h, w] (the structural prior z0: the input latent plus a learned correction;
    decoding it is the deterministic steps-0 result) and ``context`` [B, Cc, h, w], which
    conditions the diffusion UNet.
    """

    def __init__(
        self,
        width: int = 64,
        modes: int = 6,
        depth: int = 5,
        latent_channels: int = LATENT_CHANNELS,
        context_channels: int = CONTEXT_CHANNELS,
        emb_dim: int = 64,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.scale_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.lift = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(FNOBlock(width, modes, emb_dim, hidden) for _ in range(depth))
        self.delta_head = nn.Conv2d(width, latent_channels, 3, padding=1)
        self.context_head = nn.Conv2d(width, context_channels, 3, padding=1)
        nn.init.zeros_(self.delta_head.weight)
        nn.init.zeros_(self.delta_head.bias)

    def embedding(self, scale: torch.Tensor) -> torch.Tensor:
        """The scale [B, 1] as the FiLM embedding every block reads."""
        # log-scale, spread so that 2..8 spans a useful range of the sinusoid frequencies
        return self.scale_mlp(sinusoidal_embedding(torch.log(scale) / math.log(2) * 100, self.emb_dim))

    def features(self, latent: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The trunk shared by both heads."""
        emb = self.embedding(scale)
        h = self.lift(latent)
        for block in self.blocks:
            h = block(h, emb)
        return F.gelu(h)

    def forward(self, latent: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(latent, scale)
        return latent + self.delta_head(h), self.context_head(h)
