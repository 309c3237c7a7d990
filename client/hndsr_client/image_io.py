"""Image file I/O for the client, the UI and the server (numpy + Pillow only: no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".avif", ".webp")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read PNG, JPEG, TIFF/GeoTIFF or AVIF as uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 [H, W, 3] as PNG or TIFF (chosen by suffix)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise ValueError(f"output must be .png, .tif or .tiff, got {suffix!r}")
    Image.fromarray(image).save(path, compression="tiff_lzw" if suffix != ".png" else None)


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """SR output size for an LR input: round(s*H) x round(s*W)."""
    return int(round(scale * height)), int(round(scale * width))
