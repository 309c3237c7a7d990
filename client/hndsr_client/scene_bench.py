"""Scene-mode benchmark: output MP/s and client peak RSS on a synthetic scene, and the cost and
pixel difference of chunking (one image sent whole vs through scene mode, same seed).

The scene tiles a real image (the demo sample by default), mirrored at every repeat so that it has
no hard seams, as an EPSG:32611 GeoTIFF written in row stripes.

    python -m client.scene_bench --size 4000 --scale 4 --steps 0 --url 127.0.0.1:8001
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from hndsr_client.image_io import read_rgb
from hndsr_client.interface import DEFAULT_SCALE
from hndsr_client.scene import DEFAULT_OVERLAP, SceneOptions, upscale_scene
from hndsr_client.triton_client import HNDSRClient

STRIPE = 256


def mirrored(n: int, period: int) -> np.ndarray:
    """Indexes 0..n-1 folded into [0, period) by mirroring (0 1 2 2 1 0 0 1 ...)."""
    i = np.arange(n) % (2 * period)
    return np.where(i < period, i, 2 * period - 1 - i)


def write_scene(path: Path, image: np.ndarray, height: int, width: int) -> None:
    """``image`` tiled with mirroring to ``height`` x ``width``, as a tiled RGB GeoTIFF."""
    cols = mirrored(width, image.shape[1])
    rows = mirrored(height, image.shape[0])
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32611",
        "transform": Affine(0.6, 0.0, 500_000.0, 0.0, -0.6, 4_100_000.0),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "photometric": "RGB",
    }
    with rasterio.open(path, "w", **profile) as ds:
        for y in range(0, height, STRIPE):
            part = image[rows[y : y + STRIPE]][:, cols]
            ds.write(part.transpose(2, 0, 1), window=((y, y + part.shape[0]), (0, width)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@dataclass
class Comparison:
    steps: int
    whole_s: float
    chunked_s: float
    max_abs: int
    psnr_db: float

    @property
    def overhead(self) -> float:
        return self.chunked_s / self.whole_s - 1


def compare_whole_chunked(
    url: str, image: np.ndarray, workdir: Path, options: SceneOptions, urls: list[str] | None = None
) -> Comparison:
    """Send ``image`` whole (one request to ``url``), then through scene mode; time both, diff the pixels."""
    src = workdir / "compare.tif"
    write_scene(src, image, *image.shape[:2])
    with HNDSRClient(url, options.protocol, options.timeout_s) as client:
        start = time.perf_counter()
        whole = client.upscale(image, options.scale, options.steps, options.seed, options.eta).image
        whole_s = time.perf_counter() - start
    dst = workdir / "compare_out.tif"
    start = time.perf_counter()
    upscale_scene(src, dst, urls or [url], options)
    chunked_s = time.perf_counter() - start
    with rasterio.open(dst) as ds:
        chunked = ds.read().transpose(1, 2, 0)
    diff = int(np.abs(whole.astype(np.int16) - chunked.astype(np.int16)).max())
    return Comparison(options.steps, whole_s, chunked_s, diff, psnr(whole, chunked))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    urls: list[str],
    size: int = 4000,
    scale: float = DEFAULT_SCALE,
    steps: int = 0,
    workers: int | None = None,
    chunk: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    compare_size: int = 1000,
    compare_steps: list[int] | None = None,
    image_path: Path | None = None,
    workdir: Path | None = None,
    echo=print,
) -> dict:
    """Run the scene, then the whole-vs-chunked comparisons; returns and prints the figures."""
    if image_path is None:
        raise ValueError("image_path: a real image to tile into the scene is required")
    image = read_rgb(image_path)
    tmp = Path(tempfile.mkdtemp(prefix="hndsr-scene-bench-", dir=workdir))
    try:
        src, dst = tmp / "scene.tif", tmp / "scene_out.tif"
        write_scene(src, image, size, size)
        options = SceneOptions(scale=scale, steps=steps, chunk=chunk, overlap=overlap, workers=workers, quiet=False)
        report = upscale_scene(src, dst, urls, options)
        rss = peak_rss_mb()
        oh, ow = report.output_size
        result = {
            "scene_lr": f"{size}x{size}",
            "output_mp": round(oh * ow / 1e6, 2),
            "chunks": report.chunks,
            "seconds": round(report.seconds, 1),
            "output_mp_per_s": round(report.output_mp_per_s, 4),
            "client_peak_rss_mb": round(rss, 1),
            "endpoints": len(urls),
            "requests": report.requests,
        }
        echo(
            f"scene {size}x{size} LR at {scale:g}x, steps {steps}: {result['output_mp']} output MP, "
            f"{report.chunks} chunks in {report.seconds:.1f}s = {report.output_mp_per_s:.4f} output MP/s; "
            f"client peak RSS {rss:.0f} MB"
        )
        crop = image[mirrored(compare_size, image.shape[0])][:, mirrored(compare_size, image.shape[1])]
        result["compare"] = []
        for s in compare_steps if compare_steps is not None else [steps]:
            opts = SceneOptions(
                scale=scale, steps=s, chunk=chunk, overlap=overlap, workers=workers, quiet=True, fresh=True
            )
            c = compare_whole_chunked(urls[0], crop, tmp, opts)  # one endpoint both ways
            result["compare"].append({**c.__dict__, "overhead": round(c.overhead, 4)})
            echo(
                f"{compare_size}x{compare_size} LR whole vs chunked, steps {s}: whole {c.whole_s:.1f}s, "
                f"chunked {c.chunked_s:.1f}s (overhead {c.overhead:+.1%}); max abs diff {c.max_abs}, "
                f"PSNR {c.psnr_db:.2f} dB"
            )
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    import sys

    from hndsr_client.cli import cli

    cli(["bench-scene", *sys.argv[1:]])


if __name__ == "__main__":
    main()
