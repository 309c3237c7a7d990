"""The reference degradation of the evaluation protocol (../shared/data/README.md) and training."""

from __future__ import annotations

import numpy as np
from PIL import Image


def bicubic_downscale(hr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of uint8 HR to (height, width)."""
    return np.array(Image.fromarray(hr).resize((size[1], size[0]), Image.BICUBIC))
