"""Scene mode's chunk plan: overlapping LR chunks under the server's output limit, aligned to its
tile grid, and the separable Hann blend weights of their overlaps (a numpy twin of ``hndsr.inference.tiling``,
proven equal by a test). No torch."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window

from hndsr_client.interface import Limits, model_scale

DEFAULT_CHUNK = 512
"""LR pixels per chunk side, at most (trimmed so that the chunk stride is a whole number of server
tiles: 496 at 4x, a 1984 x 1984 output of 3.9 MP, well under the 16 MP limit)."""
DEFAULT_OVERLAP = 16
"""LR pixels shared by neighbouring chunks: covers the server's own edge effects (bicubic support,
edge replication, the FNO's tile context) with room for the blend ramp."""
MAX_ALIGN = 256


@dataclass(frozen=True)
class Tiling:
    """The server's canvas tiling (``HNDSRClient.tiling`` reads it from the model config)."""

    tile: int
    overlap: int
    latent_factor: int
    min_model_scale: int = 1
    """Scales below it are computed at it and resized down by the server."""

    def model_scale(self, scale: float) -> float:
        """The scale of the canvas the server computes for ``scale`` (``interface.model_scale``)."""
        return model_scale(scale, self.min_model_scale)

    @property
    def stride(self) -> int:
        """HR pixels between the server's own tiles: chunk strides that are multiples of it put each
        chunk's tiles where the whole image's are, so chunk interiors come out as if the image had
        been sent whole."""
        return self.tile - self.overlap


class SceneError(RuntimeError):
    """A scene could not be finished (the message says which chunk or setting, and why)."""


class SceneParamError(ValueError):
    """A scene-mode setting is out of range (the message names it and the limit)."""


def _step(scale: float, unit: int) -> int | None:
    """Smallest LR step q (<= MAX_ALIGN) such that scale * q is a whole multiple of ``unit`` HR px."""
    for q in range(1, MAX_ALIGN + 1):
        units = scale * q / unit
        if abs(units - round(units)) < 1e-9:
            return q
    return None


def alignment(scale: float, latent_factor: int) -> int:
    """Smallest LR step q such that scale * q is a whole number of latent cells."""
    q = _step(scale, latent_factor)
    if q is not None:
        return q
    raise SceneParamError(
        f"scale {scale:g}: scene mode needs a scale whose multiples reach whole latent cells within "
        f"{MAX_ALIGN} LR pixels (e.g. 2, 2.5, 3, 4, 6.4)"
    )


@dataclass(frozen=True)
class Axis:
    """Chunk layout along one axis: LR starts/sizes and the HR starts/sizes they produce."""

    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    out_starts: tuple[int, ...]
    out_sizes: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.starts)


def plan_axis(length: int, chunk: int, overlap: int, scale: float, align: int = 1, min_side: int = 8) -> Axis:
    """Chunks every ``chunk - overlap`` LR px (a multiple of ``align``); the last one runs to the edge
    and may be shorter (at least ``min_side`` px, the server's smallest input side)."""
    stride = chunk - overlap
    starts = [0]
    while starts[-1] + chunk < length:
        starts.append(starts[-1] + stride)
    if len(starts) > 1 and length - starts[-1] < min_side:
        starts[-1] = max(starts[-2] + align, (length - min_side) // align * align)
    sizes = [min(chunk, length - s) for s in starts]
    # The server computes its output size from the float32 SCALE it receives: round(scale32 * n).
    scale32 = float(np.float32(scale))
    out_starts = [round(scale * s) for s in starts]  # whole numbers: starts are aligned
    out_sizes = [round(scale32 * n) for n in sizes]
    return Axis(tuple(starts), tuple(sizes), tuple(out_starts), tuple(out_sizes))


def axis_weights(starts: Iterable[int], sizes: Iterable[int]) -> list[np.ndarray]:
    """Blend ramps along one axis (numpy twin of ``hndsr.inference.tiling``): 1 inside, sin^2 up over the part
    shared with the previous tile, cos^2 down over the part shared with the next one."""
    starts, sizes = list(starts), list(sizes)
    weights = []
    for i, (start, size) in enumerate(zip(starts, sizes)):
        w = np.ones(size, dtype=np.float64)
        if i > 0:
            n = min(size, starts[i - 1] + sizes[i - 1] - start)
            if n > 0:
                w[:n] *= np.sin(np.pi * (np.arange(n) + 0.5) / (2 * n)) ** 2
        if i + 1 < len(starts):
            n = min(size, start + size - starts[i + 1])
            if n > 0:
                w[size - n :] *= np.cos(np.pi * (np.arange(n) + 0.5) / (2 * n)) ** 2
        weights.append(w)
    return weights


@dataclass(frozen=True)
class Chunk:
    id: int
    row: int
    col: int
    window: Window
    """LR window."""
    out_window: Window
    """HR window of its output."""


@dataclass
class ChunkPlan:
    """Chunk layout of a ``height`` x ``width`` LR scene at ``scale``."""

    height: int
    width: int
    scale: float
    chunk: int
    overlap: int
    rows: Axis
    cols: Axis
    tiling: Tiling
    _weights: dict = field(default_factory=dict, repr=False)

    @property
    def out_height(self) -> int:
        return self.rows.out_starts[-1] + self.rows.out_sizes[-1]

    @property
    def out_width(self) -> int:
        return self.cols.out_starts[-1] + self.cols.out_sizes[-1]

    @property
    def chunks(self) -> list[Chunk]:
        out = []
        for (r, c), i in zip(itertools.product(range(len(self.rows)), range(len(self.cols))), itertools.count()):
            rows, cols = self.rows, self.cols
            out.append(
                Chunk(
                    i,
                    r,
                    c,
                    Window(cols.starts[c], rows.starts[r], cols.sizes[c], rows.sizes[r]),
                    Window(cols.out_starts[c], rows.out_starts[r], cols.out_sizes[c], rows.out_sizes[r]),
                )
            )
        return out

    def weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """HR blend ramps per chunk row and per chunk column."""
        if not self._weights:
            self._weights["rows"] = axis_weights(self.rows.out_starts, self.rows.out_sizes)
            self._weights["cols"] = axis_weights(self.cols.out_starts, self.cols.out_sizes)
        return self._weights["rows"], self._weights["cols"]


def max_chunk(scale: float, align: int, limits: Limits = Limits()) -> int:
    """Largest chunk (multiple of ``align``) whose output fits the server's limit."""
    side = int(math.sqrt(limits.max_output_pixels) / scale) // align * align
    scale32 = float(np.float32(scale))
    while side > align and round(scale32 * side) ** 2 > limits.max_output_pixels:
        side -= align
    return side


def plan_chunks(
    height: int,
    width: int,
    scale: float,
    tiling: Tiling,
    chunk: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    limits: Limits = Limits(),
) -> ChunkPlan:
    """Validate the settings (errors name the field and the limit) and lay out the chunks."""
    if not (math.isfinite(scale) and limits.scale_min <= scale <= limits.scale_max):
        raise SceneParamError(f"scale must be in [{limits.scale_min:g}, {limits.scale_max:g}], got {scale:g}")
    if min(height, width) < limits.min_input_side:
        raise SceneParamError(f"input sides must be >= {limits.min_input_side} pixels, got {height}x{width}")
    if overlap < 0:
        raise SceneParamError(f"overlap must be >= 0, got {overlap}")
    work = tiling.model_scale(scale)  # the server's canvas is at this scale
    align = math.lcm(alignment(work, tiling.latent_factor), alignment(scale, 1))
    overlap = -(-overlap // align) * align  # chunk starts move in steps of align LR px
    largest = max_chunk(work, align, limits)
    if chunk is None:
        chunk = min(DEFAULT_CHUNK, largest)
    if chunk > largest:
        raise SceneParamError(
            f"chunk {chunk} LR px at scale {scale:g}"
            + (f" (computed at {work:g}x)" if work != scale else "")
            + f" gives outputs over the server limit of "
            f"{limits.max_output_pixels} pixels; chunk must be <= {largest}"
        )
    chunk = chunk // align * align
    smallest = max(limits.min_input_side, 2 * overlap + align)
    if chunk < smallest:
        raise SceneParamError(f"chunk must be >= {smallest} LR px (2 x overlap + {align}) at scale {scale:g}")
    tile_step = _step(work, tiling.stride)
    if tile_step and chunk - overlap >= tile_step:  # stride a whole number of server tiles
        chunk = (chunk - overlap) // tile_step * tile_step + overlap
    rows = plan_axis(height, chunk, overlap, scale, align, limits.min_input_side)
    cols = plan_axis(width, chunk, overlap, scale, align, limits.min_input_side)
    return ChunkPlan(height, width, scale, chunk, overlap, rows, cols, tiling)
