"""The de-gridding notch removes a latent-cell-periodic pattern and little else."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from hndsr.evaluation.metrics import periodic_ratio
from hndsr.inference.degrid import remove_grid_pattern


def _smooth_field(seed: int, size: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, size // 16, size // 16, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0] * 0.1


def _cell_pattern(seed: int, size: int = 128) -> torch.Tensor:
    """One random value per (colour, phase) of the 4x4 cell, repeated over the image."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 4, generator=g).repeat(1, size // 4, size // 4) * 0.05


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_periodic_pattern_is_removed_and_content_kept():
    field, pattern = _smooth_field(0), _cell_pattern(1)
    out = remove_grid_pattern(field + pattern)
    assert periodic_ratio(_to_uint8(field + pattern)) > 100
    assert periodic_ratio(_to_uint8(out)) < 10
    # What is left of the pattern besides its phase average: < 1% of its energy.
    expected = field + pattern.mean((1, 2), keepdim=True)
    assert (out - expected).pow(2).mean() < 0.01 * pattern.pow(2).mean()
    assert (remove_grid_pattern(field) - field).abs().max() < 0.01 * field.abs().max()


def test_white_noise_loses_only_the_notch_bands():
    noise = torch.randn(3, 128, 128, generator=torch.Generator().manual_seed(2))
    removed = (noise - remove_grid_pattern(noise)).pow(2).mean() / noise.pow(2).mean()
    # 15 of 16 phase contrasts, each over a 5x5-cell mean: about 15/16/25 = 3.75 % of the energy.
    assert 0.02 < float(removed) < 0.06


def test_phase_constant_image_is_untouched():
    """A pattern equal on all 16 phases is not periodic at the cell: it must survive untouched."""
    flat = torch.full((3, 64, 64), 0.3)
    torch.testing.assert_close(remove_grid_pattern(flat), flat)


def test_separable_filter_equals_a_depthwise_convolution_with_replicate_padding():
    from hndsr.inference.degrid import _SMOOTH, _separable_filter

    x = torch.randn(1, 3, 23, 17, generator=torch.Generator().manual_seed(3))
    for taps in (_SMOOTH, (0.2,) * 5, (0.25, 0.5, 0.25)):
        k = torch.tensor(taps)
        kernel = torch.outer(k, k).expand(3, 1, len(taps), len(taps))
        pad = len(taps) // 2
        reference = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel, groups=3)
        torch.testing.assert_close(_separable_filter(x, taps), reference, atol=1e-6, rtol=1e-5)
