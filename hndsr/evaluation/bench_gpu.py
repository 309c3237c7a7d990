"""Throughput of the serving pipeline on a CUDA GPU, in output megapixels per second.

Runs ``hndsr.inference.pipeline.super_resolve`` (the code the Triton core runs: tiling, FNO prior,
batched DDIM steps, decoding, de-gridding, stitching) with the stages as PyTorch CUDA modules,
warm, best of ``--repeats``. It measures the model on the GPU without Triton: the lent GPU
machine has no Docker, no TensorRT and no Triton GPU build (see README, Deployment).

    PYTHONPATH=.:client python3 -m hndsr.cli bench-gpu --out $OUT
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from hndsr.inference.pipeline import Sampling, SRParams, TorchRunner, super_resolve
from hndsr.models.hndsr import HNDSR


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: HNDSR, lr_side: int, steps: int, chunk: int, repeats: int, dtype: torch.dtype) -> dict:
    """Best-of-``repeats`` time (after one warm-up) of one ``lr_side``-square image at 4x."""
    device = next(model.parameters()).device
    runner = TorchRunner(model, chunk=chunk)
    image = torch.randint(0, 256, (lr_side, lr_side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    params = SRParams(scale=4.0, steps=steps, seed=0)
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            result = super_resolve(image, params, runner, Sampling.of(model))
        _sync(device)
        times.append(time.perf_counter() - start)
    best = min(times[1:])
    out_mp = result.image.shape[0] * result.image.shape[1] / 1e6
    return {
        "lr_side": lr_side,
        "steps": steps,
        "dtype": str(dtype).removeprefix("torch."),
        "tiles": result.info["tiles"],
        "output_mp": round(out_mp, 2),
        "best_s": round(best, 4),
        "mp_per_s": round(out_mp / best, 2),
    }


def bench(
    weights: Path,
    sizes: tuple[int, ...],
    steps: tuple[int, ...],
    chunk: int,
    repeats: int,
    device: str,
    out: Path | None,
) -> None:
    """Time every (LR side, step count, dtype); print a table, optionally write bench_gpu.json."""
    torch_device = torch.device(device)
    model = HNDSR.load(weights, device=torch_device).eval()
    dtypes = [torch.float32, torch.bfloat16] if torch_device.type == "cuda" else [torch.float32]
    name = torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu"
    rows = []
    for side in sizes:
        for n in steps:
            for dtype in dtypes:
                rows.append(measure(model, side, n, chunk, repeats, dtype))
                print(json.dumps(rows[-1]), flush=True)
    result = {"device": name, "torch": torch.__version__, "weights": str(weights.name), "rows": rows}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps(result, indent=2))
    print_table(name, rows)


def print_table(name: str, rows: list[dict]) -> None:
    keys = ("lr_side", "steps", "dtype", "output_mp", "best_s", "mp_per_s")
    print(f"{name}\n| LR side | steps | dtype | output MP | s | MP/s |")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
