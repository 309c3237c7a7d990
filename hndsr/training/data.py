"""Training data: HR crops of the aerial images and their bicubic LR counterparts, made on the device."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from hndsr.config import SCALE_MAX, SCALE_MIN
from hndsr.inference.imaging import list_images, load_images, upsample
from hndsr_client.image_io import read_rgb

ANCHOR_SCALES = (2.0, 3.0, 4.0, 4.0, 4.0, 8.0)
"""4x (the main use) weighted three times."""


def load_training_images(spec: str) -> list[np.ndarray]:
    """The images of comma-separated folders; a folder named twice is drawn twice as often."""
    return [image for folder in spec.split(",") if folder.strip() for image in load_images(folder.strip())]


def pack_images(
    sources: list[str | Path], dst: str | Path, budget_bytes: int | None = None, per_folder: int | None = None
) -> tuple[int, int]:
    """Copy images of the ``sources`` folders to ``dst/<k>-<folder name>/`` as lossless WebP.

    Ships training data to the GPU machine inside its transfer limit (``transfer_budget``). With a
    budget or a per-folder count, a balanced subset: each folder's tiles in a fixed shuffled order,
    taken from the folders in turn, skipping a tile that would exceed the budget. Returns (files,
    bytes written); raises if a round trip is not bit-exact.
    """
    dst = Path(dst)
    queues = []
    for k, src in enumerate(Path(s) for s in sources):
        files = list_images(src)
        random.Random(k).shuffle(files)
        queues.append([(src, dst / f"{k}-{src.name}", f) for f in files[:per_folder]])
    count = total = 0
    for row in range(max(len(q) for q in queues)):
        for src, folder, path in (q[row] for q in queues if row < len(q)):
            image = read_rgb(path)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=100, method=3, exact=True)
            data = buffer.getvalue()
            if budget_bytes is not None and total + len(data) > budget_bytes:
                continue
            if not np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image):
                raise RuntimeError(f"lossless WebP round trip failed for {path}")
            out = (folder / path.relative_to(src)).with_suffix(".webp")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            count, total = count + 1, total + len(data)
    return count, total


def sample_scale(rng: random.Random) -> float:
    """Anchor scales (4x weighted) 70% of the time, else uniform in the supported range."""
    if rng.random() < 0.7:
        return rng.choice(ANCHOR_SCALES)
    return round(rng.uniform(SCALE_MIN, SCALE_MAX), 2)


def bicubic_degrade(hr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic downscale of float [B, 3, H, W] in [0, 1], quantised to 8 bits.

    Torch's antialiased bicubic is PIL's filter (the reference degradation), vectorised on
    the training device.
    """
    lr = F.interpolate(hr, size=size, mode="bicubic", antialias=True, align_corners=False)
    return (lr.clamp(0, 1) * 255).round() / 255


class PatchBank:
    """The training images on the device; draws batches of (bicubic canvas, HR, scale)."""

    def __init__(
        self,
        images: list[np.ndarray],
        patch: int,
        device: torch.device,
        seed: int = 0,
        augment: bool = False,
        scales: tuple[float, ...] = (),
    ) -> None:
        kept = [im for im in images if min(im.shape[:2]) >= patch]
        if not kept:
            raise ValueError(f"no image is at least {patch} pixels on each side")
        self.images = [torch.from_numpy(np.array(im)).permute(2, 0, 1).to(device) for im in kept]
        self.patch = patch
        self.device = device
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.augment = augment
        self.scales = scales
        """Scales a batch is drawn at (repeat one to weight it); () = ``sample_scale``'s mix."""

    def batch(self, size: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One scale per batch; random crop, rotation, flip and colour-channel order per sample.

        With ``augment``, half of the batches are cut from the images shrunk by a random factor
        in [0.55, 1] (other ground sample distances: more texture variety than 151 tiles hold).
        """
        if scale is None:
            scale = self.rng.choice(self.scales) if self.scales else sample_scale(self.rng)
        p, rng = self.patch, self.rng
        shrink = rng.uniform(0.55, 1.0) if self.augment and rng.random() < 0.5 else 1.0
        side = p if shrink == 1.0 else int(round(p / shrink))
        crops = []
        for _ in range(size):
            im = rng.choice([i for i in self.images if min(i.shape[1:]) >= side] or self.images)
            side_i = min(side, *im.shape[1:])
            y = rng.randrange(im.shape[1] - side_i + 1)
            x = rng.randrange(im.shape[2] - side_i + 1)
            crop = im[:, y : y + side_i, x : x + side_i]
            if side_i != p:
                crop = F.interpolate(crop[None].float(), size=(p, p), mode="bicubic", antialias=True)[0]
                crop = crop.round().clamp(0, 255).to(torch.uint8)
            crop = torch.rot90(crop, rng.randrange(4), dims=(1, 2))
            if rng.random() < 0.5:
                crop = crop.flip(2)
            if self.augment and rng.random() < 0.3:
                crop = crop[torch.randperm(3, generator=self.gen).tolist()]
            crops.append(crop)
        hr = torch.stack(crops).float() / 255.0
        lr_side = max(2, int(round(p / scale)))
        up = upsample(bicubic_degrade(hr, (lr_side, lr_side)), (p, p))
        return up, hr, torch.full((size, 1), float(scale), device=self.device)
