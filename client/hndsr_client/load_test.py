"""``hndsr-loadtest``: drive the served ``hndsr`` model with Triton's perf_analyzer.

perf_analyzer ships in the ``tritonclient`` manylinux wheel (``.venv/bin/perf_analyzer``); on a
CPU machine it needs Debian's ``libb64-0d`` and ``libcudart.so.12`` (PyPI
``nvidia-cuda-runtime-cu12``, found automatically) on the library path.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import typer

from hndsr_client.image_io import read_rgb
from hndsr_client.interface import DEFAULT_PORTS, DEFAULT_SCALE


def perf_analyzer_path() -> str:
    candidate = Path(sys.executable).parent / "perf_analyzer"
    found = str(candidate) if candidate.exists() else shutil.which("perf_analyzer")
    if not found:
        raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[all]==2.51.0' (manylinux wheel)")
    return found


def perf_env() -> dict[str, str]:
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec and spec.submodule_search_locations:
        lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH", "")]))
    return env


def input_data(image: np.ndarray, scale: float, steps: int, seed: int) -> dict:
    """perf_analyzer's --input-data JSON for one hndsr request."""
    return {
        "data": [
            {
                "IMAGE": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)},
                "SCALE": [scale],
                "STEPS": [steps],
                "SEED": [seed],
            }
        ]
    }


def run(
    url: str,
    image: np.ndarray,
    scale: float,
    steps: int,
    concurrency: str,
    requests_per_window: int,
    out_csv: Path,
    protocol: str = "grpc",
    request_count: int | None = None,
    stability_percentage: float = 10.0,
    max_trials: int = 10,
) -> list[dict[str, str]]:
    """Run perf_analyzer over a concurrency range; returns its CSV rows.

    By default perf_analyzer measures windows of ``requests_per_window`` requests until three in a
    row agree within ``stability_percentage`` (at most ``max_trials`` windows) and fails with
    "Failed to obtain stable measurement" otherwise, which a busy machine can cause. With
    ``request_count`` it measures exactly that many requests per concurrency level instead, with
    no stability criterion: the mode for checking that load testing works on a shared machine."""
    if request_count:
        # perf_analyzer takes --request-count for one concurrency level per run only.
        levels = _levels(concurrency)
        rows: list[dict[str, str]] = []
        for level in levels:
            part = out_csv.with_name(f"{out_csv.stem}.c{level}{out_csv.suffix}")
            rows += _perf_analyzer(
                url, image, scale, steps, str(level), ["--request-count", str(request_count)], part, protocol
            )
            part.unlink()
        with out_csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return rows
    window = [
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(requests_per_window),
        "--stability-percentage",
        f"{stability_percentage:g}",
        "--max-trials",
        str(max_trials),
    ]
    return _perf_analyzer(url, image, scale, steps, concurrency, window, out_csv, protocol)


def _levels(concurrency: str) -> list[int]:
    """Concurrency levels of a perf_analyzer ``start:end:step`` range."""
    parts = [int(p) for p in concurrency.split(":")]
    start, end, step = (parts + [parts[0], 1][len(parts) - 1 :])[:3]
    return list(range(start, end + 1, step))


def _perf_analyzer(
    url: str,
    image: np.ndarray,
    scale: float,
    steps: int,
    concurrency: str,
    measurement: list[str],
    out_csv: Path,
    protocol: str,
) -> list[dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "input.json"
        data.write_text(json.dumps(input_data(image, scale, steps, 0)))
        cmd = [
            perf_analyzer_path(),
            "-m",
            "hndsr",
            "-u",
            url,
            "-i",
            protocol,
            "--input-data",
            str(data),
            "--shape",
            f"IMAGE:{image.shape[0]},{image.shape[1]},3",
            "--concurrency-range",
            concurrency,
            *measurement,
            "--max-threads",
            "4",
            "-f",
            str(out_csv),
        ]
        proc = subprocess.run(cmd, env=perf_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"perf_analyzer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
    with out_csv.open() as f:
        return list(csv.DictReader(f))


def main() -> None:
    typer.run(_main)


def _main(
    image: Path = typer.Argument(..., exists=True, help="LR input image"),
    url: str = typer.Option(f"127.0.0.1:{DEFAULT_PORTS['grpc']}", help="Triton address (gRPC or HTTP port)"),
    protocol: str = typer.Option("grpc", help="grpc or http"),
    scale: float = typer.Option(DEFAULT_SCALE, help="upscaling factor"),
    steps: int = typer.Option(0, help="DDIM steps (0 = the fast deterministic path)"),
    concurrency: str = typer.Option("1:2", help="perf_analyzer --concurrency-range"),
    requests: int = typer.Option(10, help="requests per measurement window"),
    stability: float = typer.Option(10.0, help="perf_analyzer --stability-percentage"),
    max_trials: int = typer.Option(10, help="perf_analyzer --max-trials"),
    request_count: int | None = typer.Option(
        None, help="measure exactly this many requests per level (no stability criterion)"
    ),
    csv_path: Path = typer.Option(Path("runs/perf_analyzer.csv"), "--csv", help="where the full CSV goes"),
) -> None:
    """Load-test the hndsr model with perf_analyzer and print throughput and latency per concurrency."""
    if protocol not in ("grpc", "http"):
        raise typer.BadParameter("must be grpc or http", param_hint="--protocol")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = run(
        url,
        read_rgb(image),
        scale,
        steps,
        concurrency,
        requests,
        csv_path,
        protocol,
        request_count,
        stability,
        max_trials,
    )
    print("| concurrency | inferences/s | p50 latency (ms) | p90 (ms) | p99 (ms) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['Concurrency']} | {float(row['Inferences/Second']):.2f} | {int(row['p50 latency']) / 1000:.0f} "
            f"| {int(row['p90 latency']) / 1000:.0f} | {int(row['p99 latency']) / 1000:.0f} |"
        )
    print(f"full CSV: {csv_path}")


if __name__ == "__main__":
    main()
