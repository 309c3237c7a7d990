"""Image conversions and the bicubic degradation/upsampling used by training, eval and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

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


def bicubic_downscale(hr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference degradation: PIL bicubic resize of uint8 HR to (height, width)."""
    return np.asarray(Image.fromarray(hr).resize((size[1], size[0]), Image.BICUBIC))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in [0, 1] -> uint8 [H, W, 3] (same device)."""
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous()


def upsample(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling of float [B, 3, h, w] to ``size``: the input every stage model sees."""
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
