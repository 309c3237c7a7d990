"""Image helpers: listing and reading image files, tensor conversions, the bicubic upsampling every
stage model sees, and the reference degradation of the evaluation protocol and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from hndsr_client.image_io import IMAGE_SUFFIXES, read_rgb


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """float [3, H, W] in [0, 1] -> uint8 [H, W, 3] (same device)."""
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous()


def upsample(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling of float [B, 3, h, w] to ``size``: the input every stage model sees."""
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def dihedral_view(image: torch.Tensor, index: int, inverse: bool = False) -> torch.Tensor:
    """View ``index`` (0-7) of an image [..., H, W] under the flips and transposes of the square:
    bit 0 mirrors left-right, bit 1 flips top-bottom, bit 2 transposes. Views 0-1 and 0-3 are
    themselves groups (no transposes, same shape). ``inverse`` maps a view back."""
    ops = [
        (index & 1, lambda x: x.flip(-1)),
        (index & 2, lambda x: x.flip(-2)),
        (index & 4, lambda x: x.transpose(-2, -1)),
    ]
    for active, op in reversed(ops) if inverse else ops:
        if active:
            image = op(image)
    return image


def bicubic_downscale(hr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of uint8 HR to (height, width): the protocol's (../shared/data/README.md) LR."""
    return np.array(Image.fromarray(hr).resize((size[1], size[0]), Image.BICUBIC))


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively), sorted."""
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    return files


def load_images(root: str | Path) -> list[np.ndarray]:
    return [read_rgb(p) for p in list_images(root)]
