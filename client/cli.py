"""``hndsr-client``: upscale an image through Triton, check health, show model metadata."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from client.triton_client import HNDSRClient, HNDSRError
from hndsr.config import DEFAULT_STEPS
from hndsr.image_io import read_rgb, write_rgb

cli = typer.Typer(add_completion=False, help="Thin client for the HNDSR model served by Triton.")

URL = typer.Option(None, help="server address (default 127.0.0.1:8001 for gRPC, :8000 for HTTP)")
PROTOCOL = typer.Option("grpc", help="grpc or http")


def _client(url: str | None, protocol: str, timeout: float = 900.0) -> HNDSRClient:
    return HNDSRClient(url or ("127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"), protocol, timeout)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@cli.command()
def upscale(
    src: Path = typer.Argument(..., exists=True, help="PNG, JPEG, TIFF/GeoTIFF or AVIF"),
    dst: Path = typer.Argument(..., help="output .png, .tif or .tiff"),
    scale: float = typer.Option(4.0, help="upscaling factor (2 to 8, non-integer allowed)"),
    steps: int = typer.Option(DEFAULT_STEPS, help="DDIM steps; 0 = fast deterministic path"),
    seed: int = typer.Option(0, help="noise seed (same seed -> same output)"),
    eta: float = typer.Option(0.0, help="DDIM eta (0 = deterministic sampler)"),
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
            result = client.upscale(image, scale=scale, steps=steps, seed=seed, eta=eta)
    except HNDSRError as exc:
        _fail(exc)
    write_rgb(dst, result.image)
    h, w = image.shape[:2]
    oh, ow = result.image.shape[:2]
    typer.echo(
        f"{src} ({w}x{h}) -> {dst} ({ow}x{oh}) scale={scale:g} steps={steps} seed={seed} "
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
