"""Training data: HR crops of the aerial GeoTIFFs and their bicubic LR counterparts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from hndsr.config import SCALE_MAX, SCALE_MIN
from hndsr.image_io import IMAGE_SUFFIXES, bicubic_downscale, read_rgb
from hndsr.imaging import upsample

ANCHOR_SCALES = (2.0, 3.0, 4.0, 4.0, 8.0)


def list_images(root: str | Path) -> list[Path]:
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    return files


def load_images(root: str | Path) -> list[np.ndarray]:
    return [read_rgb(p) for p in list_images(root)]


def sample_scale(rng: random.Random) -> float:
    """Anchor scales (4x weighted twice) 60% of the time, else uniform in the supported range."""
    if rng.random() < 0.6:
        return rng.choice(ANCHOR_SCALES)
    return round(rng.uniform(SCALE_MIN, SCALE_MAX), 2)


class PatchSampler:
    """Draws batches of (bicubic-upsampled LR, HR, scale) with one scale per batch."""

    def __init__(self, images: list[np.ndarray], patch: int, seed: int = 0) -> None:
        self.images = [im for im in images if min(im.shape[:2]) >= patch]
        self.patch = patch
        self.rng = random.Random(seed)

    def batch(self, size: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = scale if scale is not None else sample_scale(self.rng)
        p = self.patch
        lr_side = max(2, int(round(p / scale)))
        hrs, lrs = [], []
        for _ in range(size):
            im = self.rng.choice(self.images)
            y = self.rng.randrange(im.shape[0] - p + 1)
            x = self.rng.randrange(im.shape[1] - p + 1)
            crop = im[y : y + p, x : x + p]
            crop = np.rot90(crop, self.rng.randrange(4))
            if self.rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.ascontiguousarray(crop)
            hrs.append(crop)
            lrs.append(bicubic_downscale(crop, (lr_side, lr_side)))
        hr = torch.from_numpy(np.stack(hrs)).permute(0, 3, 1, 2).float() / 255.0
        lr = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).float() / 255.0
        return upsample(lr, (p, p)), hr, torch.full((size, 1), float(scale))
