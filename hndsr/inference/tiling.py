"""Overlapping tiles with Hann-ramp blending (the one tiling implementation).

Tiles cover a canvas with a fixed tile size; neighbouring tiles share ``overlap`` pixels
(more for the last tile, which is pinned to the canvas edge). Each tile is weighted by a
separable raised-cosine ramp over the parts it shares with a neighbour and by 1 elsewhere,
so sides on the canvas border are not darkened and a constant canvas is reproduced exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` (length >= tile)."""
    if length < tile:
        raise ValueError(f"canvas side {length} is smaller than the tile {tile}")
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def _axis_weights(starts: list[int], tile: int) -> list[torch.Tensor]:
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(tile, dtype=torch.float64)
        if i > 0:
            n = starts[i - 1] + tile - start
            if n > 0:
                w[:n] *= torch.sin(math.pi * (torch.arange(n) + 0.5) / (2 * n)) ** 2
        if i + 1 < len(starts):
            n = start + tile - starts[i + 1]
            if n > 0:
                w[tile - n :] *= torch.cos(math.pi * (torch.arange(n) + 0.5) / (2 * n)) ** 2
        weights.append(w)
    return weights


@dataclass
class TilePlan:
    """Tile layout of a ``height`` x ``width`` canvas."""

    height: int
    width: int
    tile: int
    ys: list[int]
    xs: list[int]
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, height: int, width: int, tile: int, overlap: int, align: int = 1) -> TilePlan:
        stride = tile - overlap
        if stride <= 0 or stride % align or tile % align or height % align or width % align:
            raise ValueError("tile, stride and canvas must be positive multiples of align")
        return cls(height, width, tile, tile_starts(height, tile, stride), tile_starts(width, tile, stride))

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def positions(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def downscaled(self, factor: int) -> TilePlan:
        """The same layout on a grid ``factor`` times coarser (e.g. the latent grid)."""
        if any(v % factor for v in (self.height, self.width, self.tile, *self.ys, *self.xs)):
            raise ValueError(f"plan is not aligned to {factor}")
        return TilePlan(
            self.height // factor,
            self.width // factor,
            self.tile // factor,
            [y // factor for y in self.ys],
            [x // factor for x in self.xs],
        )

    def weights(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Per-tile blend weights [N, 1, T, T]."""
        key = (str(device), dtype)
        if key not in self._cache:
            wy = _axis_weights(self.ys, self.tile)
            wx = _axis_weights(self.xs, self.tile)
            w = torch.stack([torch.outer(a, b) for a in wy for b in wx])[:, None]
            self._cache[key] = w.to(device=device, dtype=dtype)
        return self._cache[key]

    def split(self, canvas: torch.Tensor) -> torch.Tensor:
        """[C, H, W] -> [N, C, T, T]."""
        t = self.tile
        return torch.stack([canvas[:, y : y + t, x : x + t] for y, x in self.positions])

    def blend(self, tiles: torch.Tensor) -> torch.Tensor:
        """[N, C, T, T] -> [C, H, W], Hann-weighted average of overlapping tiles."""
        t = self.tile
        w = self.weights(tiles.device, tiles.dtype)
        out = tiles.new_zeros(tiles.shape[1], self.height, self.width)
        norm = tiles.new_zeros(1, self.height, self.width)
        for i, (y, x) in enumerate(self.positions):
            out[:, y : y + t, x : x + t] += tiles[i] * w[i]
            norm[:, y : y + t, x : x + t] += w[i]
        return out / norm
