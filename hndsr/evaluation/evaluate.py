"""Evaluation on held-out imagery: HNDSR (PyTorch and Triton) vs bicubic and SPAN, same crops, one run.

Protocol (../shared/data/README.md): HR cropped to a multiple of the scale, LR by PIL bicubic
downscale, PSNR-Y/SSIM-Y with ``scale`` pixels shaved; NIQE (no-reference, lower is better)
on the shaved SR image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from hndsr.evaluation.baselines import SPAN_LABEL, SPAN_MODELS, SpanNcnn, bicubic, span_label
from hndsr.evaluation.metrics import haarpsi, periodic_ratio, psnr_y, ssim_y, texture
from hndsr.evaluation.niqe import DEFAULT_PARAMS, niqe
from hndsr.inference.imaging import bicubic_downscale, list_images
from hndsr.inference.pipeline import Sampling, SRParams, TorchRunner, super_resolve
from hndsr_client.image_io import read_rgb


@dataclass
class Pair:
    name: str
    hr: np.ndarray
    lr: np.ndarray


def load_pair(name: str, hr: np.ndarray, scale: int) -> Pair:
    """The protocol's pair: HR cropped to a multiple of ``scale``, LR by bicubic downscale."""
    h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
    hr = np.ascontiguousarray(hr[:h, :w])
    return Pair(name, hr, bicubic_downscale(hr, (h // scale, w // scale)))


def load_pairs(data: str | Path, scale: int, limit: int | None = None) -> list[Pair]:
    return [load_pair(path.stem, read_rgb(path), scale) for path in list_images(data)[:limit]]


@dataclass
class MethodScores:
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    haarpsi: list[float] = field(default_factory=list)
    niqe: list[float] = field(default_factory=list)
    periodic: list[float] = field(default_factory=list)
    detail: list[float] = field(default_factory=list)
    grain: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, sr: np.ndarray, hr: np.ndarray, scale: int, niqe_params: Path, seconds: float) -> None:
        self.seconds.append(seconds)
        self.psnr.append(psnr_y(sr, hr, scale))
        self.ssim.append(ssim_y(sr, hr, scale))
        self.haarpsi.append(haarpsi(sr, hr))
        big_enough = min(hr.shape[:2]) - 2 * scale >= 96  # NIQE works on 96x96 blocks
        self.niqe.append(niqe(sr, scale, niqe_params) if big_enough else float("nan"))
        self.periodic.append(periodic_ratio(sr))
        detail, grain = texture(sr, hr)
        self.detail.append(detail)
        self.grain.append(grain)

    def summary(self) -> dict[str, float]:
        return {
            "psnr_y": float(np.mean(self.psnr)),
            "ssim_y": float(np.mean(self.ssim)),
            "haarpsi": float(np.mean(self.haarpsi)),
            "niqe": float(np.nanmean(self.niqe)) if not np.all(np.isnan(self.niqe)) else float("nan"),
            "periodic_ratio": float(np.median(self.periodic)),
            "detail": float(np.median(self.detail)),
            "grain_per_detail": float(np.median(self.grain) / np.median(self.detail)),
            "seconds_per_image": float(np.mean(self.seconds)),
        }


Upscaler = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def torch_upscaler(model, scale: int, steps: int, seed: int = 0, ensemble: int = 1) -> Upscaler:
    runner = TorchRunner(model)

    def run(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        params = SRParams(scale=float(scale), steps=steps, seed=seed, ensemble=ensemble)
        out = super_resolve(torch.from_numpy(lr), params, runner, Sampling.of(model))
        return out.image.numpy()

    return run


@torch.no_grad()
def autoencode(model, hr: np.ndarray) -> np.ndarray:
    """decoder(encoder(HR)): the autoencoder's ceiling (it sees the HR image; not an upscaler)."""
    h, w = hr.shape[:2]
    x = torch.from_numpy(np.array(hr)).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
    out = model.decoder(model.encoder(x))[0, :, :h, :w]
    return (out.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def triton_upscaler(url: str, scale: int, steps: int, seed: int = 0, ensemble: int = 1) -> Upscaler:
    from hndsr_client.triton_client import HNDSRClient

    client = HNDSRClient(url)

    def run(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return client.upscale(lr, scale=float(scale), steps=steps, seed=seed, ensemble=ensemble).image

    return run


GRID_ROWS = 3
"""Scored images shown in the grid (plus any ``grid_extra`` images)."""


def _grid(rows: list[tuple[Pair, dict[str, np.ndarray]]], scale: int, path: Path, crop: int = 128) -> None:
    """Side-by-side centre crops: LR (nearest), each method, HR; one row per image."""
    columns = ["LR (nearest)", *rows[0][1].keys(), "HR"]
    zoom = max(1, 256 // crop)
    cell = crop * zoom
    canvas = Image.new("RGB", (cell * len(columns), (cell + 18) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (pair, outputs) in enumerate(rows):
        h, w = pair.hr.shape[:2]
        y0, x0 = (h - crop) // 2 // scale * scale, (w - crop) // 2 // scale * scale
        lr_near = np.asarray(Image.fromarray(pair.lr).resize((w, h), Image.NEAREST))
        images = [lr_near, *outputs.values(), pair.hr]
        for c, (label, image) in enumerate(zip(columns, images)):
            tile = Image.fromarray(image[y0 : y0 + crop, x0 : x0 + crop]).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (c * cell, r * (cell + 18) + 18))
            draw.text((c * cell + 4, r * (cell + 18) + 3), label, fill="black")
    canvas.save(path)


def evaluate(
    data: str | Path,
    scale: int,
    steps_list: list[int],
    model,
    triton_url: str | None,
    triton_steps: list[int],
    out_dir: Path,
    limit: int | None = None,
    niqe_params: Path = DEFAULT_PARAMS,
    grid_methods: tuple[str, ...] = (),
    grid_extra: list[Pair] | None = None,
    ensembles: tuple[int, ...] = (1,),
) -> dict:
    """Score every method on the same pairs; write results.json/.md and grid.png to ``out_dir``.

    ``grid_extra``: more images shown in the grid but not scored (e.g. one with roofs or rows,
    where a periodic artefact would show). ``ensembles``: self-ensemble sizes scored for each
    step count (rows named ``... ensemble=N`` for N > 1).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(data, scale, limit)
    methods: dict[str, Upscaler] = {"bicubic": lambda lr, size: bicubic(lr, size)}
    if scale in SPAN_MODELS:
        span = SpanNcnn(scale)
        methods[span_label(scale)] = lambda lr, size: span(lr)
    for n in ensembles:
        label = f" ensemble={n}" if n > 1 else ""
        for steps in steps_list:
            methods[f"HNDSR steps={steps}{label} (PyTorch)"] = torch_upscaler(model, scale, steps, ensemble=n)
        for steps in triton_steps if triton_url else []:
            methods[f"HNDSR steps={steps}{label} (Triton)"] = triton_upscaler(triton_url, scale, steps, ensemble=n)

    scores = {name: MethodScores() for name in methods}
    keep = {name: [] for name in methods}
    agreement: dict[str, float] = {}
    hr_periodic = []
    ceiling = MethodScores()
    for pair in tqdm(pairs, desc=f"eval x{scale}"):
        size = pair.hr.shape[:2]
        hr_periodic.append(periodic_ratio(pair.hr))
        start = time.perf_counter()
        ceiling.add(autoencode(model, pair.hr), pair.hr, scale, niqe_params, time.perf_counter() - start)
        for name, fn in methods.items():
            start = time.perf_counter()
            sr = fn(pair.lr, size)
            seconds = time.perf_counter() - start
            assert sr.shape == pair.hr.shape, (name, sr.shape, pair.hr.shape)
            scores[name].add(sr, pair.hr, scale, niqe_params, seconds)
            if len(keep[name]) < GRID_ROWS:
                keep[name].append(sr)
    for name in methods:
        twin = name.replace("(Triton)", "(PyTorch)")
        if name.endswith("(Triton)") and twin in keep:
            diffs = [np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(keep[name], keep[twin])]
            agreement[name] = float(max(diffs))

    summary = {name: s.summary() for name, s in scores.items()}
    result = {
        "data": str(data),
        "images": len(pairs),
        "scale": scale,
        "summary": summary,
        "hr_periodic_ratio": float(np.median(hr_periodic)),
        "autoencoder_ceiling": ceiling.summary(),
        "max_abs_pixel_diff_triton_vs_pytorch": agreement,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "results.md").write_text(markdown_table(result))
    shown = [k for k in keep if not grid_methods or k in grid_methods]
    rows = [(pair, {k: keep[k][i] for k in shown}) for i, pair in enumerate(pairs[:GRID_ROWS])]
    for pair in grid_extra or []:
        rows.append((pair, {k: methods[k](pair.lr, pair.hr.shape[:2]) for k in shown}))
    _grid(rows, scale, out_dir / "grid.png")
    return result


def markdown_table(result: dict) -> str:
    lines = [
        f"Scale {result['scale']}x, {result['images']} images of `{result['data']}`",
        "",
        "| method | PSNR-Y (dB) ↑ | SSIM-Y ↑ | HaarPSI ↑ | NIQE ↓ | detail | grain/detail ↓ | periodic ratio ↓ "
        "| s / image (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| HR itself | – | – | – | – | 1.00 | 1.00 | {result['hr_periodic_ratio']:.1f} | – |",
    ]
    c = result["autoencoder_ceiling"]
    lines.append(
        f"| autoencoder ceiling: decoder(encoder(HR)), sees HR | {c['psnr_y']:.2f} | {c['ssim_y']:.3f} "
        f"| {c['haarpsi']:.3f} | {c['niqe']:.2f} | {c['detail']:.2f} | {c['grain_per_detail']:.2f} "
        f"| {c['periodic_ratio']:.1f} | {c['seconds_per_image']:.2f} |"
    )
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {s['psnr_y']:.2f} | {s['ssim_y']:.3f} | {s['haarpsi']:.3f} | {s['niqe']:.2f} "
            f"| {s['detail']:.2f} | {s['grain_per_detail']:.2f} | {s['periodic_ratio']:.1f} "
            f"| {s['seconds_per_image']:.2f} |"
        )
    if result["max_abs_pixel_diff_triton_vs_pytorch"]:
        lines += ["", "Triton vs PyTorch, max abs pixel difference on the first images:"]
        lines += [f"- {k}: {v:.0f}" for k, v in result["max_abs_pixel_diff_triton_vs_pytorch"].items()]
    return "\n".join(lines) + "\n"


SUMMARY_ROWS = (("bicubic", "bicubic"), ("SPAN", SPAN_LABEL), ("HNDSR steps 0", "HNDSR steps=0"),
                ("HNDSR steps 1 (default)", "HNDSR steps=1"))  # fmt: skip


def _row(result: dict, pattern: str) -> dict | None:
    """A method's scores, preferring the Triton row of an HNDSR method (what is served)."""
    name = pattern.format(scale=result["scale"])
    summary = result["summary"]
    for key in (f"{name} (Triton)", f"{name} (PyTorch)", name):
        if key in summary:
            return summary[key]
    return None


def summary_tables(results: dict[str, dict[int, dict]]) -> str:
    """README tables from ``hndsr eval`` results: ``results[set name][scale]`` = a results.json.

    PSNR-Y at every scale and set, then the 4x quality and texture columns per set."""
    sets = list(results)
    scales = sorted({scale for by_scale in results.values() for scale in by_scale})
    head = [f"{name} {scale}×" for name in sets for scale in scales]
    lines = ["| PSNR-Y (dB) | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, pattern in SUMMARY_ROWS:
        cells = []
        for name in sets:
            for scale in scales:
                row = _row(results[name][scale], pattern) if scale in results[name] else None
                cells.append(f"{row['psnr_y']:.2f}" if row else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    columns = " | ".join(f"{n}: SSIM-Y / HaarPSI / NIQE / detail / grain/detail / periodic" for n in sets)
    lines += ["", f"| 4× | {columns} |", "|---" * (len(sets) + 1) + "|"]
    hr = " | ".join(f"– / – / – / 1.00 / 1.00 / {results[n][4]['hr_periodic_ratio']:.1f}" for n in sets)
    lines.append(f"| HR | {hr} |")
    for label, pattern in SUMMARY_ROWS:
        cells = []
        for name in sets:
            row = _row(results[name][4], pattern) if 4 in results[name] else None
            cells.append(
                f"{row['ssim_y']:.3f} / {row['haarpsi']:.3f} / {row['niqe']:.2f} / {row['detail']:.2f} / "
                f"{row['grain_per_detail']:.2f} / {row['periodic_ratio']:.1f}"
                if row and "detail" in row
                else "–"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
