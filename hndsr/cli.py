"""``hndsr`` command line: serve on Triton, run a demo through it, train, evaluate, export."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from hndsr.config import DEFAULT_SCALE, DEFAULT_STEPS
from hndsr.paths import ASSETS, MODEL_REPOSITORY, REPO_ROOT, WEIGHTS
from hndsr.serving.server import RunningServer, ServerOptions
from hndsr.training.commands import app as train_app

app = typer.Typer(add_completion=False, help="HNDSR super-resolution served by NVIDIA Triton.")
app.add_typer(train_app, name="train")

REPO = MODEL_REPOSITORY
SAMPLE = ASSETS / "laodong_peninsula.avif"
"""The satellite demo sample (MIT, see hndsr/assets/README.md)."""


def ensure_exported(weights: Path = WEIGHTS, repo: Path = REPO) -> None:
    """Export the stage ONNX files unless they already match the weights."""
    from hndsr.serving.freshness import is_current

    if not is_current(repo, weights):
        from hndsr.serving.export import export_all  # imports torch: only when there is work

        typer.echo(f"exporting ONNX from {weights} ...")
        export_all(weights, repo)


def _options(
    host: str, http_port: int, grpc_port: int, metrics_port: int, config_name: str | None, **more
) -> ServerOptions:
    """Options of a server on these ports; ``more``: other ``ServerOptions`` fields."""
    return ServerOptions(
        **{"model_repository": REPO, **more},
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        model_config_name=config_name,
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0 to expose)"),
    http_port: int = typer.Option(8000, help="Triton's HTTP/REST port (health, model control)"),
    grpc_port: int = typer.Option(8001, help="Triton's gRPC port (what the client uses)"),
    metrics_port: int = typer.Option(8002, help="Triton's Prometheus metrics port (/metrics)"),
    config_name: str | None = typer.Option(None, help="Triton --model-config-name (e.g. gpu)"),
    max_inflight: int | None = typer.Option(
        None, help="queued + running requests admitted at once; more are refused (default: model config, 4)"
    ),
    max_running: int | None = typer.Option(None, help="of those, how many run at once (default: model config, 2)"),
    drain_grace: float = typer.Option(60.0, help="seconds requests in flight at SIGTERM/Ctrl-C may take to finish"),
    stall_timeout: float = typer.Option(60.0, help="reload a stage with requests pending and no progress this long"),
    model_repository: Path = typer.Option(REPO, help="model repository (a mounted layout in a container)"),
    tritonserver: Path | None = typer.Option(
        None, help="a tritonserver with its own backends (the official container's); default: the bundled one"
    ),
    triton_arg: list[str] = typer.Option([], help="extra tritonserver flag, repeatable (--triton-arg=--x=y)"),
) -> None:
    """Start tritonserver, watch and heal it; Ctrl-C/SIGTERM drains, then stops it. The same launcher
    runs the containers (compose.yaml, export/k8s), so they drain too."""
    from hndsr.serving.supervisor import SupervisorOptions, serve_forever

    if model_repository == REPO:
        ensure_exported()
    opts = _options(
        host,
        http_port,
        grpc_port,
        metrics_port,
        config_name,
        model_repository=model_repository,
        tritonserver=tritonserver,
        extra_args=tuple(triton_arg),
        max_inflight=max_inflight,
        max_running=max_running,
    )
    sup = SupervisorOptions(drain_grace_s=drain_grace, stall_timeout_s=stall_timeout)
    raise typer.Exit(serve_forever(opts, sup))


@app.command()
def demo(
    src: Path = typer.Argument(SAMPLE, exists=True, help="image to upscale (default: the bundled satellite sample)"),
    dst: Path = typer.Argument(Path("sr.png"), help="output PNG or TIFF"),
    scale: float = typer.Option(DEFAULT_SCALE, help="upscaling factor, 2-8"),
    steps: int = typer.Option(DEFAULT_STEPS, help="DDIM steps (0 = fast deterministic path)"),
    seed: int = typer.Option(0, help="noise seed (same seed, same bytes)"),
    keep_serving: bool = typer.Option(False, help="leave Triton running after the demo"),
) -> None:
    """Export if needed, start Triton, super-resolve SRC -> DST through it over gRPC, stop."""
    ensure_exported()
    opts = _options("127.0.0.1", 8000, 8001, 8002, None)
    log = REPO_ROOT / "runs" / "tritonserver.log"
    t0 = time.perf_counter()
    try:
        with _server(opts, log) as server:
            typer.echo(f"Triton ready in {time.perf_counter() - t0:.1f}s (log: {log})")
            _upscale(server.grpc, src, dst, scale, steps, seed)
            if keep_serving:
                typer.echo("serving until Ctrl-C ...")
                if server.proc.wait():
                    typer.echo(f"tritonserver exited with code {server.proc.returncode} (log: {log})", err=True)
                    raise typer.Exit(1)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the demo; Triton is stopped by then


def _upscale(url: str, src: Path, dst: Path, scale: float, steps: int, seed: int) -> None:
    from hndsr_client.image_io import read_rgb, write_rgb
    from hndsr_client.triton_client import HNDSRClient

    with HNDSRClient(url) as client:
        result = client.upscale(read_rgb(src), scale=scale, steps=steps, seed=seed)
    write_rgb(dst, result.image)
    h, w = result.image.shape[:2]
    typer.echo(f"{src} -> {dst}: {w}x{h}, {result.info['tiles']} tiles, {steps} steps, latency {result.latency_s:.1f}s")
    typer.echo(json.dumps(result.info))


@app.command()
def up(
    host: str = typer.Option("127.0.0.1", help="address for Triton and the UI"),
    ui_port: int = typer.Option(7860, help="port of the web UI"),
    http_port: int = typer.Option(8000, help="Triton's HTTP/REST port"),
    grpc_port: int = typer.Option(8001, help="Triton's gRPC port"),
    metrics_port: int = typer.Option(8002, help="Triton's Prometheus metrics port"),
    drain_grace: float = typer.Option(60.0, help="seconds requests in flight at SIGTERM/Ctrl-C may take to finish"),
) -> None:
    """Start Triton (CPU) and the web UI with the same supervised lifecycle as ``hndsr serve``
    (watchdog, self-healing, bounded queue); Ctrl-C/SIGTERM stops the UI, then drains Triton."""
    from hndsr.serving.supervisor import SupervisorOptions, serve_forever

    def start_ui(opts: ServerOptions) -> Callable[[], None]:
        from hndsr_ui.app import launch

        local = "127.0.0.1" if opts.host in ("0.0.0.0", "::") else opts.host
        demo = launch(
            f"{local}:{opts.grpc_port}",
            f"{local}:{opts.http_port}",
            f"http://{local}:{opts.metrics_port}/metrics",
            host,
            ui_port,
            block=False,
        )
        typer.echo(f"UI on http://{host}:{ui_port}")
        return demo.close

    ensure_exported()
    opts = _options(host, http_port, grpc_port, metrics_port, None)
    raise typer.Exit(serve_forever(opts, SupervisorOptions(drain_grace_s=drain_grace), companion=start_ui))


@app.command()
def export(
    weights: Path = typer.Option(WEIGHTS, help="model weights (safetensors)"),
    repo: Path = typer.Option(REPO, help="Triton model repository to write/read the ONNX stages and configs"),
) -> None:
    """Export every stage to ONNX, check parity with PyTorch, write the configs."""
    from hndsr.serving.export import export_all

    export_all(weights, repo)


@app.command()
def bench(
    weights: Path = typer.Option(WEIGHTS, help="model weights (safetensors)"),
    repo: Path = typer.Option(REPO, help="Triton model repository to write/read the ONNX stages and configs"),
) -> None:
    """Print speed ratios measured side by side: DFT-matmul vs torch.fft, onnxruntime vs PyTorch."""
    from hndsr.evaluation.bench import report

    ensure_exported(weights, repo)
    typer.echo(report(weights, repo))


@app.command("bench-span")
def bench_span(
    data: Path = typer.Option(..., exists=True, help="HR images (e.g. ../shared/data/aerial/val)"),
    scale: int = typer.Option(4, help="2 or 4 (SPAN's scales)"),
    steps: str = typer.Option(f"0,{DEFAULT_STEPS}", help="HNDSR step counts to time"),
    triton: str = typer.Option("auto", help="'auto' starts the bundled Triton, or a gRPC URL of a running one"),
    repeats: int = typer.Option(2, help="timed passes per side after one warm-up pass (the faster counts)"),
    limit: int | None = typer.Option(None, help="only the first N images"),
) -> None:
    """Speed through Triton vs SPAN (ncnn, 2 threads) on the same crops, printed as ratios."""
    from hndsr.evaluation.bench import speed_vs_span

    with _triton(triton) as url:
        typer.echo(speed_vs_span(data, url, scale, tuple(_int_list(steps)), repeats, limit))


@app.command("eval-table")
def eval_table(
    results: list[str] = typer.Argument(
        ..., help="NAME=DIR pairs: DIR holds x2/, x4/, x8/ results of `hndsr eval` (e.g. TEAK=docs/eval)"
    ),
) -> None:
    """Print the README's quality tables from `hndsr eval` results (results.json of each scale)."""
    from hndsr.evaluation.evaluate import summary_tables

    found: dict[str, dict[int, dict]] = {}
    for pair in results:
        name, _, folder = pair.partition("=")
        for scale in (2, 4, 8):
            path = Path(folder) / f"x{scale}" / "results.json"
            if path.exists():
                found.setdefault(name, {})[scale] = json.loads(path.read_text())
    typer.echo(summary_tables(found))


@app.command("bench-gpu")
def bench_gpu(
    weights: Path = typer.Option(WEIGHTS, help="model weights (safetensors)"),
    sizes: str = typer.Option("256,1000", help="LR sides (4x output: 1000 -> 16 MP, the server's limit)"),
    steps: str = typer.Option(f"0,{DEFAULT_STEPS}", help="DDIM step counts to time"),
    chunk: int = typer.Option(256, help="tiles per stage call (Triton sends all tiles at once)"),
    repeats: int = typer.Option(2, help="timed passes after one warm-up (the best counts)"),
    device: str = typer.Option("cuda", help="torch device (cuda, or cpu for a dry run)"),
    out: Path | None = typer.Option(None, help="also write bench_gpu.json here"),
) -> None:
    """Output megapixels per second of the serving pipeline on a GPU, float32 and bfloat16."""
    from hndsr.evaluation.bench_gpu import bench

    bench(weights, tuple(_int_list(sizes)), tuple(_int_list(steps)), chunk, repeats, device, out)


@contextlib.contextmanager
def _server(
    opts: ServerOptions, log: Path, ready_timeout: float = 300.0, stop_timeout: float = 30.0
) -> Iterator[RunningServer]:
    """``running_server`` for a command: not ready -> the reason and exit status 1; SIGTERM -> Triton
    stopped, then exit status 143. Ctrl-C stops Triton and propagates."""
    from hndsr.serving.server import ServerNotReady, Terminated, running_server

    try:
        with running_server(opts, log, ready_timeout, stop_timeout) as server:
            yield server
    except ServerNotReady as exc:
        typer.echo(f"tritonserver did not become ready: {exc}", err=True)
        raise typer.Exit(1) from None
    except Terminated as exc:
        typer.echo(f"{exc}: tritonserver stopped", err=True)
        raise typer.Exit(exc.code) from None


@contextlib.contextmanager
def _triton(triton: str, weights: Path = WEIGHTS) -> Iterator[str]:
    """Yield a gRPC URL: ``triton`` itself, or that of a bundled server started (and stopped) here
    on free loopback ports."""
    if triton != "auto":
        yield triton
        return
    from hndsr.serving.server import free_port

    ensure_exported(weights)
    opts = _options("127.0.0.1", free_port(), free_port(), free_port(), None)
    # A private server whose only client is this command: no need for the ~9 s graceful unload.
    with _server(opts, REPO_ROOT / "runs" / "tritonserver-eval.log", stop_timeout=2.0) as server:
        yield server.grpc


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., exists=True, help="held-out HR images (e.g. ../shared/data/aerial/val)"),
    scale: int = typer.Option(4, help="integer scale of the protocol"),
    steps: str = typer.Option("0,1,2,4,8", help="DDIM step counts scored in PyTorch"),
    triton: str = typer.Option(
        "auto", help="'auto' starts the bundled Triton, a gRPC URL uses a running one, 'none' skips the served model"
    ),
    triton_steps: str = typer.Option(f"0,{DEFAULT_STEPS}", help="step counts scored through Triton"),
    out: Path = typer.Option(Path("runs/eval"), help="results.md, results.json and grid.png go here"),
    limit: int | None = typer.Option(None, help="only the first N images"),
    weights: Path = typer.Option(WEIGHTS, help="model weights (safetensors)"),
    grid_sample: bool = typer.Option(True, help="add a crop of the satellite sample (roofs) to the grid"),
    start_timestep: int | None = typer.Option(
        None, help="override the weights' DDIM start timestep in the PyTorch rows (for sweeps)"
    ),
    texture_floor: float | None = typer.Option(
        None, help="override the weights' texture-gate floor in the PyTorch rows (0 with gain 1 = off; sweeps)"
    ),
    texture_gain: float | None = typer.Option(None, help="override the weights' texture-gate gain (PyTorch rows)"),
    ensemble: str = typer.Option("1", help="self-ensemble sizes scored for every step count (e.g. 1,4)"),
) -> None:
    """Score HNDSR (PyTorch and Triton) against bicubic and SPAN on the same crops."""
    from hndsr.evaluation.baselines import span_label
    from hndsr.evaluation.evaluate import Pair, evaluate
    from hndsr.inference.imaging import bicubic_downscale
    from hndsr.models.hndsr import HNDSR
    from hndsr_client.image_io import read_rgb

    model = HNDSR.load(weights)
    if start_timestep is not None:
        model.start_timestep.fill_(float(start_timestep))
    if texture_floor is not None:
        model.texture_floor.fill_(texture_floor)
    if texture_gain is not None:
        model.texture_gain.fill_(texture_gain)
    extra = []
    if grid_sample:
        hr = read_rgb(SAMPLE)[:128, 310:438]  # the roofs of the satellite sample
        extra.append(Pair("laodong_roofs", hr, bicubic_downscale(hr, (128 // scale, 128 // scale))))
    with contextlib.ExitStack() as stack:
        url = None if triton == "none" else stack.enter_context(_triton(triton, weights))
        default = f"HNDSR steps={DEFAULT_STEPS}"
        result = evaluate(
            data,
            scale,
            _int_list(steps),
            model,
            url,
            _int_list(triton_steps),
            out,
            limit,
            grid_methods=("bicubic", span_label(scale), "HNDSR steps=0 (PyTorch)", f"{default} (PyTorch)"),
            grid_extra=extra,
            ensembles=tuple(_int_list(ensemble)),
        )
    from hndsr.evaluation.evaluate import markdown_table

    typer.echo(markdown_table(result))
    typer.echo(f"written: {out / 'results.md'}, {out / 'results.json'}, {out / 'grid.png'}")


if __name__ == "__main__":
    app()
