"""``hndsr-client``: upscale an image through Triton, check health, show model metadata."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hndsr_client.image_io import read_rgb, write_rgb
from hndsr_client.interface import DEFAULT_SCALE, DEFAULT_STEPS, ENSEMBLE_MAX, SCALE_MAX, SCALE_MIN
from hndsr_client.triton_client import HNDSRClient, HNDSRError

cli = typer.Typer(add_completion=False, help="Thin client for the HNDSR model served by Triton.")

URL = typer.Option(None, help="server address (default 127.0.0.1:8001 for gRPC, :8000 for HTTP)")
PROTOCOL = typer.Option("grpc", help="grpc or http")
SCALE = typer.Option(DEFAULT_SCALE, help=f"upscaling factor ({SCALE_MIN:g} to {SCALE_MAX:g}, non-integer allowed)")
STEPS = typer.Option(DEFAULT_STEPS, help="DDIM steps; 0 = fast, most faithful; 1+ add generated fine texture")
ETA = typer.Option(0.0, help="DDIM eta (0 = deterministic sampler)")
ENSEMBLE = typer.Option(
    1, help=f"self-ensemble: average 1 to {ENSEMBLE_MAX} flipped/transposed views (N x the time, more faithful)"
)


def _client(url: str | None, protocol: str, timeout: float = 900.0) -> HNDSRClient:
    return HNDSRClient(url or ("127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"), protocol, timeout)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@cli.command()
def upscale(
    src: Path = typer.Argument(..., exists=True, help="PNG, JPEG, TIFF/GeoTIFF or AVIF"),
    dst: Path = typer.Argument(..., help="output .png, .tif or .tiff"),
    scale: float = SCALE,
    steps: int = STEPS,
    seed: int = typer.Option(0, help="noise seed (same seed -> same output)"),
    eta: float = ETA,
    ensemble: int = ENSEMBLE,
    url: str | None = URL,
    protocol: str = PROTOCOL,
    timeout: float = typer.Option(900.0, help="client timeout in seconds"),
) -> None:
    """Super-resolve SRC into DST through the served model and print the latency."""
    if dst.suffix.lower() not in (".png", ".tif", ".tiff"):
        _fail(ValueError(f"DST must end in .png, .tif or .tiff, got {dst.suffix!r}"))
    image = read_rgb(src)
    try:
        with _client(url, protocol, timeout) as client:
            result = client.upscale(image, scale=scale, steps=steps, seed=seed, eta=eta, ensemble=ensemble)
    except HNDSRError as exc:
        _fail(exc)
    write_rgb(dst, result.image)
    h, w = image.shape[:2]
    oh, ow = result.image.shape[:2]
    typer.echo(
        f"{src} ({w}x{h}) -> {dst} ({ow}x{oh}) scale={scale:g} steps={steps} seed={seed} ensemble={ensemble} "
        f"tiles={result.info['tiles']} latency={result.latency_s:.2f}s"
    )
    typer.echo(json.dumps(result.info))


@cli.command()
def health(url: str | None = URL, protocol: str = PROTOCOL) -> None:
    """Server liveness/readiness and whether the hndsr model is ready."""
    try:
        with _client(url, protocol) as client:
            status = client.health()
    except HNDSRError as exc:
        _fail(exc)
    typer.echo(json.dumps(status))
    if not all(status.values()):
        raise typer.Exit(1)


@cli.command()
def metadata(url: str | None = URL, protocol: str = PROTOCOL) -> None:
    """The hndsr model's metadata and config as JSON."""
    try:
        with _client(url, protocol) as client:
            typer.echo(json.dumps(client.metadata(), indent=2))
    except HNDSRError as exc:
        _fail(exc)


SCENE_URL = typer.Option(None, "--url", help="server address, repeatable (round-robin) (default: 127.0.0.1:8001)")


@cli.command("upscale-scene")
def upscale_scene(
    src: Path = typer.Argument(..., exists=True, help="GeoTIFF (any raster GDAL reads), or a folder of .tif/.tiff"),
    dst: Path = typer.Argument(..., help="output Cloud-Optimized GeoTIFF (.tif), or a folder when SRC is one"),
    scale: float = SCALE,
    steps: int = STEPS,
    seed: int = typer.Option(0, help="noise seed (each chunk gets its own seed derived from it)"),
    eta: float = ETA,
    ensemble: int = ENSEMBLE,
    url: list[str] | None = SCENE_URL,
    protocol: str = PROTOCOL,
    workers: int | None = typer.Option(None, help="chunks in flight at once (default: 2 per --url)"),
    chunk: int | None = typer.Option(None, help="LR pixels per chunk side (default: 512, less at scales > 7.8)"),
    overlap: int = typer.Option(16, help="LR pixels shared by neighbouring chunks (blended)"),
    value_range: tuple[float, float] | None = typer.Option(
        None, "--range", help="LO HI: stretch of non-8-bit input (default: 2-98 % percentiles per band)"
    ),
    tries: int = typer.Option(5, help="attempts per chunk (exponential back-off, next endpoint)"),
    timeout: float = typer.Option(900.0, help="client timeout per chunk request in seconds"),
    fresh: bool = typer.Option(False, help="discard chunks of an interrupted run instead of resuming it"),
    quiet: bool = typer.Option(False, help="no progress bar or messages"),
) -> None:
    """Super-resolve a whole scene (or every .tif/.tiff of a folder) chunk by chunk into a COG."""
    from hndsr_client.scene import SceneError, SceneOptions, upscale_folder
    from hndsr_client.scene import upscale_scene as run_scene

    options = SceneOptions(
        scale=scale,
        steps=steps,
        seed=seed,
        eta=eta,
        ensemble=ensemble,
        chunk=chunk,
        overlap=overlap,
        workers=workers,
        value_range=tuple(value_range) if value_range and None not in value_range else None,
        tries=tries,
        protocol=protocol,
        timeout_s=timeout,
        fresh=fresh,
        quiet=quiet,
    )
    urls = list(url) if url else ["127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"]
    done = (lambda report: None) if quiet else (lambda report: typer.echo(report.summary()))
    try:
        if src.is_dir():
            upscale_folder(src, dst, urls, options, on_done=done)
        else:
            done(run_scene(src, dst, urls, options))
    except (SceneError, ValueError, HNDSRError, OSError) as exc:
        _fail(exc)


@cli.command("bench-scene")
def bench_scene(
    size: int = typer.Option(4000, help="LR scene side in pixels"),
    scale: float = SCALE,
    steps: int = typer.Option(0, help="DDIM steps of the scene run"),
    url: list[str] | None = SCENE_URL,
    workers: int | None = typer.Option(None, help="chunks in flight (default: 2 per --url)"),
    chunk: int | None = typer.Option(None, help="LR pixels per chunk side (default: 512)"),
    compare_size: int = typer.Option(1000, help="side of the image sent both whole and chunked (must fit whole)"),
    compare_steps: list[int] | None = typer.Option(None, help="steps of the whole-vs-chunked runs (repeatable)"),
    image: Path = typer.Option(
        ..., exists=True, help="real image tiled (mirrored) into the scene, e.g. the repository's demo sample"
    ),
) -> None:
    """Benchmark scene mode: output MP/s, client peak RSS, chunking overhead and difference."""
    from hndsr_client import scene_bench

    urls = list(url) if url else ["127.0.0.1:8001"]
    try:
        result = scene_bench.run(
            urls,
            size,
            scale,
            steps,
            workers,
            chunk,
            compare_size=compare_size,
            compare_steps=list(compare_steps) if compare_steps else None,
            image_path=image,
            echo=typer.echo,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        _fail(exc)
    typer.echo(json.dumps(result))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
