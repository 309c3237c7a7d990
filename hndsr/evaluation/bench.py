"""Side-by-side speed measurements printed as ratios from one run (no thresholds, no tests).

1. FNO spectral convolution: DFT-basis matrix products (exportable) vs ``torch.fft``.
2. Each stage on a batch of tiles: onnxruntime (the CPU serving path) vs PyTorch eager.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from hndsr.config import STAGES
from hndsr.models.hndsr import HNDSR
from hndsr.models.spectral import SpectralConv2d
from hndsr.serving.stages import STAGE_SPECS, example_inputs, stage_module


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best wall time of ``repeats`` calls after one warm-up, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


@torch.no_grad()
def spectral_rows(batch: int = 8, width: int = 64, grid: int = 64) -> list[tuple[str, float, float]]:
    layer = SpectralConv2d(width, width, modes=6)
    x = torch.randn(batch, width, grid, grid)
    return [
        (
            f"spectral conv [{batch},{width},{grid},{grid}]",
            best_of(lambda: layer(x)),
            best_of(lambda: layer.forward_fft(x)),
        )
    ]


@torch.no_grad()
def stage_rows(weights: Path, repo: Path, batch: int = 8) -> list[tuple[str, float, float]]:
    model = HNDSR.load(weights)
    rows = []
    for stage in STAGES:
        inputs = example_inputs(stage, batch, torch.Generator().manual_seed(0))
        module = stage_module(model, stage)
        session = ort.InferenceSession(str(repo / stage / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {s.name: t.numpy() for s, t in zip(STAGE_SPECS[stage].inputs, inputs)}
        ort_ms = best_of(lambda s=session, f=feeds: s.run(None, f))
        torch_ms = best_of(lambda m=module, i=inputs: m(*i))
        rows.append((f"{stage} x{batch} tiles", ort_ms, torch_ms))
    return rows


def report(weights: Path, repo: Path) -> str:
    lines = [
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}",
        "",
        "| what | ours (ms) | reference (ms) | ratio ref/ours |",
        "|---|---|---|---|",
    ]
    spectral = [(n, a, b, "DFT matmul vs torch.fft") for n, a, b in spectral_rows()]
    stages = [(n, a, b, "onnxruntime vs PyTorch") for n, a, b in stage_rows(weights, repo)]
    for name, ours, ref, label in spectral + stages:
        lines.append(f"| {name} ({label}) | {ours:.1f} | {ref:.1f} | {ref / ours:.2f} |")
    return "\n".join(lines)


def speed_vs_span(
    data: Path, url: str, scale: int = 4, steps: tuple[int, ...] = (0,), repeats: int = 2, limit: int | None = None
) -> str:
    """Seconds per image through Triton vs SPAN (ncnn, 2 threads) on the same crops, as ratios.

    Each side runs over every image once to warm up, then ``repeats`` more times in turn; the
    faster of its timed passes counts.
    """
    from hndsr.evaluation.baselines import SPAN_MODELS, SpanNcnn, span_label
    from hndsr.evaluation.evaluate import load_pairs
    from hndsr_client.triton_client import HNDSRClient

    if scale not in SPAN_MODELS:
        raise ValueError(f"SPAN has weights for scales {sorted(SPAN_MODELS)} only")
    pairs = load_pairs(data, scale, limit)
    span = SpanNcnn(scale, threads=2)
    with HNDSRClient(url) as client:
        sides: dict[str, Callable[[object], object]] = {f"{span_label(scale)} (ncnn, 2 threads)": span}
        for s in steps:
            sides[f"HNDSR steps={s} (Triton)"] = lambda lr, s=s: client.upscale(lr, scale=float(scale), steps=s)
        best = {name: float("inf") for name in sides}
        for rep in range(repeats + 1):
            for name, fn in sides.items():
                start = time.perf_counter()
                for pair in pairs:
                    fn(pair.lr)
                if rep > 0:  # the first pass warms up
                    best[name] = min(best[name], (time.perf_counter() - start) / len(pairs))
    ref = best[next(iter(sides))]
    h, w = pairs[0].hr.shape[:2]
    lines = [
        f"{len(pairs)} images of `{data}` ({w}x{h} output at {scale}x), best of {repeats} warm passes",
        "",
        "| method | s / image | time (SPAN = 1) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {sec:.3f} | {sec / ref:.2f} |" for name, sec in best.items()]
    return "\n".join(lines)
