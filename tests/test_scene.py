"""Scene mode (hndsr_client/scene.py): chunk plan, blend, georeferencing; against real servers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from typer.testing import CliRunner

from hndsr.config import LATENT_FACTOR, MAX_OUTPUT_PIXELS, MIN_MODEL_SCALE, TILE, TILE_OVERLAP
from hndsr_client import HNDSRClient, ServerUnavailableError
from hndsr_client.cli import cli
from hndsr_client.georaster import Stretch, scaled_transform
from hndsr_client.image_io import read_rgb
from hndsr_client.scene import SceneOptions, parts_dir, upscale_scene
from hndsr_client.scene_plan import SceneError, SceneParamError, Tiling, axis_weights, plan_chunks
from hndsr_client.scene_store import ChunkStore

from .conftest import ROOT, free_port

DEMO = ROOT / "hndsr" / "assets" / "laodong_peninsula.avif"
CRS = "EPSG:32611"
TRANSFORM = Affine(0.6, 0.0, 500_000.0, 0.0, -0.6, 4_100_000.0)
NODATA = 0
FAST = {"scale": 4.0, "steps": 0, "chunk": 48, "overlap": 16, "workers": 1, "quiet": True, "backoff_s": 0.01}
"""96x128 LR -> 3 x 4 = 12 chunks of 48 LR px, one 208 px server tile each."""


def write_fixture(path: Path, count: int = 3, dtype: str = "uint8", height: int = 96, width: int = 128) -> Path:
    """A crop of the demo sample as a GeoTIFF with a nodata corner (NIR band and 16-bit made up from it)."""
    rgb = read_rgb(DEMO)[:height, :width].transpose(2, 0, 1).astype(np.float64)
    bands = rgb[:count] if count < 3 else rgb
    if count == 4:
        bands = np.concatenate([rgb, 0.6 * rgb[1:2] + 0.3 * rgb[0:1] + 20])
    if dtype == "uint16":
        bands = bands * 37 + 900
    bands = np.clip(np.rint(bands), 1, None).astype(dtype)
    bands[:, :10, :20] = NODATA
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype}
    with rasterio.open(path, "w", **profile, crs=CRS, transform=TRANSFORM, nodata=NODATA) as ds:
        ds.write(bands)
    return path


class Counting:
    """Client factory that counts ``upscale`` calls per URL, and can fail some of them."""

    def __init__(self, fail=lambda n: None) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, url: str):
        client = HNDSRClient(url)
        outer = self

        class Wrapped:
            def upscale(self, image, **kwargs):
                with outer.lock:
                    outer.calls.append(url)
                    n = len(outer.calls)
                outer.fail(n)
                return client.upscale(image, **kwargs)

            def close(self):
                client.close()

        return Wrapped()


TILING = Tiling(TILE, TILE_OVERLAP, LATENT_FACTOR, MIN_MODEL_SCALE)
"""The served tiling (``hndsr.config``), for the plans made without a server."""


# ------------------------------------------------------------------------------------------- no server


@pytest.mark.parametrize(
    ("height", "width", "scale", "chunk"),
    [(96, 128, 4.0, 48), (1001, 999, 2.5, None), (5000, 300, 8.0, None), (50, 8, 3.0, 40), (700, 700, 6.4, 100)],
)
def test_chunk_plan_covers_scene_under_limit_on_latent_grid(height, width, scale, chunk):
    plan = plan_chunks(height, width, scale, TILING, chunk)
    work = TILING.model_scale(scale)  # scales below 4 are computed on a 4x canvas
    assert (plan.out_height, plan.out_width) == (round(scale * height), round(scale * width))
    for axis, length in ((plan.rows, height), (plan.cols, width)):
        assert axis.starts[0] == 0 and axis.starts[-1] + axis.sizes[-1] == length
        for i in range(1, len(axis)):
            assert axis.starts[i - 1] + axis.sizes[i - 1] - axis.starts[i] >= plan.overlap  # overlap kept
        canvas_starts = [work * s for s in axis.starts]
        assert all(o % LATENT_FACTOR == 0 for o in canvas_starts)  # chunks on the whole canvas' latent grid
        assert list(axis.out_starts) == [round(scale * s) for s in axis.starts]
        if chunk is None and scale != 2.5:  # and on its server-tile grid (but the pinned last chunk)
            assert all(o % TILING.stride == 0 for o in canvas_starts[:-1])
    for c in plan.chunks:
        assert c.out_window.height == round(scale * c.window.height)
        assert round(work * c.window.height) * round(work * c.window.width) <= MAX_OUTPUT_PIXELS


def test_numpy_blend_weights_match_hndsr_tiling():
    """The client's torch-free twin gives the same Hann windows as the project's tiling."""
    import torch

    from hndsr.inference.tiling import TilePlan

    for height, width, tile, overlap in [(96, 128, 48, 16), (400, 616, 208, 16), (300, 100, 100, 40)]:
        plan = TilePlan.create(height, width, tile, overlap)
        wy = axis_weights(plan.ys, [tile] * len(plan.ys))
        wx = axis_weights(plan.xs, [tile] * len(plan.xs))
        ours = np.stack([np.outer(a, b) for a in wy for b in wx])
        theirs = plan.weights(device=torch.device("cpu"), dtype=torch.float64)[:, 0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_transform_scaled_exactly():
    for transform in (TRANSFORM, Affine(0.5, 0.1, 10.0, -0.2, -0.5, 20.0)):
        for scale in (2, 3, 4, 8):
            width, height = 123, 77
            scaled = scaled_transform(transform, scale)
            # rasterio's own arithmetic for a raster resampled to (scale * height, scale * width)
            assert scaled == transform @ transform.scale(width / (scale * width), height / (scale * height))
            assert (scaled.c, scaled.f) == (transform.c, transform.f)
            assert scaled @ (scale * width, scale * height) == pytest.approx(transform @ (width, height))


def test_stretch_round_trip_and_saturation():
    stretch = Stretch((1000.0,) * 3, (3550.0,) * 3)
    values = np.array([[[1000, 1010, 2000, 3550, 4000, 500]]] * 3, dtype=np.uint16)
    back = stretch.from_uint8(stretch.to_uint8(values), np.uint16)
    step = (3550 - 1000) / 255
    assert np.abs(back[..., :4].astype(int) - values[..., :4]).max() <= step / 2 + 1
    assert (back[..., 4] == 3550).all() and (back[..., 5] == 1000).all()  # outside [lo, hi] saturates


def test_settings_errors_name_the_field_and_limit(tmp_path):
    src = write_fixture(tmp_path / "in.tif")
    cases = [
        ({"scale": 9.0}, "scale must be in [2, 8]"),
        ({"steps": 51}, "steps must be in [0, 50]"),
        ({"ensemble": 9}, "ensemble must be in [1, 8]"),
        ({"scale": 8.0, "chunk": 600}, "chunk must be <= 500"),
        ({"chunk": 20}, "chunk must be >= 33"),
        ({"scale": 3.14159}, "scene mode needs a scale"),
    ]
    for settings, message in cases:
        with pytest.raises(SceneParamError, match=message.replace("[", r"\[").replace("]", r"\]")):
            upscale_scene(
                src, tmp_path / "out.tif", ["127.0.0.1:1"], SceneOptions(**{**FAST, **settings}), tiling=TILING
            )
    assert not parts_dir(tmp_path / "out.tif").exists()  # refused before any work
    result = CliRunner().invoke(cli, ["upscale-scene", str(src), str(tmp_path / "o.tif"), "--scale", "1.5"])
    assert result.exit_code == 1 and "scale must be in [2, 8], got 1.5" in result.output


def test_chunk_store_one_run_per_output(tmp_path):
    first, second = ChunkStore(tmp_path / "out.tif.parts"), ChunkStore(tmp_path / "out.tif.parts")
    first.open({"scale": 4})
    first.save(3, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SceneError, match="another run"):
        second.open({"scale": 4})
    first.close()
    second.open({"scale": 4})
    assert second.done() == {3}
    second.close()


def test_scene_client_imports_no_torch():
    modules = ", ".join(f"hndsr_client.{m}" for m in ("scene", "scene_plan", "scene_store", "scene_bench", "cli"))
    code = f"import sys, {modules}; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ------------------------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def fixture_tif(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("scene") / "scene.tif")


@pytest.fixture(scope="module")
def reference(triton, fixture_tif, tmp_path_factory) -> np.ndarray:
    """An uninterrupted scene-mode run of the fixture."""
    dst = tmp_path_factory.mktemp("reference") / "out.tif"
    report = upscale_scene(fixture_tif, dst, [triton["grpc"]], SceneOptions(**FAST))
    assert (report.chunks, report.sent, report.retries) == (12, 12, 0)
    with rasterio.open(dst) as ds:
        return ds.read()


@pytest.mark.integration
def test_scene_output_size_transform_crs_nodata_cog(triton, fixture_tif, reference, tmp_path):
    dst = tmp_path / "out.tif"
    upscale_scene(fixture_tif, dst, [triton["grpc"]], SceneOptions(**{**FAST, "workers": 3}))
    with rasterio.open(fixture_tif) as src, rasterio.open(dst) as out:
        assert (out.height, out.width, out.count, out.dtypes[0]) == (384, 512, 3, "uint8")
        assert out.crs == src.crs
        assert out.transform == src.transform @ src.transform.scale(src.width / out.width, src.height / out.height)
        assert out.nodata == NODATA
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert out.profile["tiled"] and out.compression.name == "deflate" and out.overviews(1)
        sr, lr = out.read(), src.read()
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _ = cog_validate(str(dst), strict=True)
    assert valid, errors
    assert (sr == reference).all()  # 3 workers in flight: same bytes as one at a time
    nodata = (sr == NODATA).all(axis=0)
    assert nodata[:40, :80].all() and nodata.sum() == 40 * 80  # the LR nodata corner, 4x, and nothing else
    assert not parts_dir(dst).exists()
    # Close to the image sent whole (the chunks' seams are blended; nodata rows left out).
    with HNDSRClient(triton["grpc"]) as client:
        whole = client.upscale(lr.transpose(1, 2, 0), scale=4.0, steps=0).image.transpose(2, 0, 1)
    diff = sr[:, 48:].astype(float) - whole[:, 48:]
    assert 10 * np.log10(255**2 / np.mean(diff**2)) > 40


@pytest.mark.integration
def test_scene_self_ensemble_reaches_the_server(triton, fixture_tif, reference, tmp_path):
    """ENSEMBLE travels with every chunk: the result is close to the whole image's 2-view
    ensemble and differs from the plain run (nodata rows left out)."""
    dst = tmp_path / "out.tif"
    upscale_scene(fixture_tif, dst, [triton["grpc"]], SceneOptions(**{**FAST, "ensemble": 2, "workers": 2}))
    with rasterio.open(fixture_tif) as src, rasterio.open(dst) as out:
        sr, lr = out.read()[:, 48:].astype(float), src.read()
    with HNDSRClient(triton["grpc"]) as client:
        whole = client.upscale(lr.transpose(1, 2, 0), scale=4.0, steps=0, ensemble=2).image.transpose(2, 0, 1)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 10 * np.log10(255**2 / np.mean((a - b) ** 2))

    assert psnr(sr, whole[:, 48:]) > 40
    assert psnr(sr, whole[:, 48:]) > psnr(reference[:, 48:].astype(float), whole[:, 48:]) + 1  # 55.1 vs 52.6 dB


@pytest.mark.integration
def test_failed_chunk_is_retried_on_the_next_endpoint(triton, fixture_tif, reference, tmp_path):
    def fail_first(n: int) -> None:
        if n == 1:
            raise ServerUnavailableError("injected: server unavailable")

    counting = Counting(fail_first)
    urls = [triton["grpc"], f"ipv4:{triton['grpc']}"]  # the same server under two names
    report = upscale_scene(fixture_tif, tmp_path / "out.tif", urls, SceneOptions(**FAST), client_factory=counting)
    assert report.retries == 1 and len(counting.calls) == 13 and report.sent == 12
    assert counting.calls[:2] == urls  # chunk 0: refused by the first endpoint, retried on the second
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert (ds.read() == reference).all()

    # A chunk that keeps failing stops the run after the bounded number of tries.
    def fail_all(n: int) -> None:
        raise ServerUnavailableError("injected: server unavailable")

    always = Counting(fail_all)
    with pytest.raises(SceneError, match="failed after 3 tries"):
        upscale_scene(
            fixture_tif, tmp_path / "bad.tif", urls, SceneOptions(**{**FAST, "tries": 3}), client_factory=always
        )
    assert len(always.calls) == 3


class Interrupted(Exception):
    pass


@pytest.mark.integration
def test_resume_after_interruption_sends_only_the_rest(triton, fixture_tif, reference, tmp_path):
    dst = tmp_path / "out.tif"

    def stop_after_five(n: int) -> None:
        if n > 5:
            raise Interrupted

    first = Counting(stop_after_five)
    with pytest.raises(Interrupted):
        upscale_scene(fixture_tif, dst, [triton["grpc"]], SceneOptions(**FAST), client_factory=first)
    assert ChunkStore(parts_dir(dst)).done() == {0, 1, 2, 3, 4} and not dst.exists()
    # Other settings do not resume silently.
    with pytest.raises(SceneError, match="other settings"):
        upscale_scene(fixture_tif, dst, [triton["grpc"]], SceneOptions(**{**FAST, "steps": 1}))
    second = Counting()
    report = upscale_scene(fixture_tif, dst, [triton["grpc"]], SceneOptions(**FAST), client_factory=second)
    assert len(second.calls) == 12 - 5 and (report.sent, report.resumed) == (7, 5)
    with rasterio.open(dst) as ds:
        assert (ds.read() == reference).all()
    assert not parts_dir(dst).exists()


def _hndsr_successes(metrics_url: str) -> float:
    """The front's success count. Triton opens its metrics port a moment after it reports ready,
    later still on a busy machine: wait for it (seen: connection refused right after start-up)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('nv_inference_request_success{model="hndsr"')
    )


@pytest.fixture(scope="module")
def second_triton(triton, tmp_path_factory):
    """Another tritonserver process, started like conftest's, on other free ports."""
    from hndsr.serving.server import ServerOptions, start_server, stop_server, wait_ready

    work = tmp_path_factory.mktemp("triton2")
    opts = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=work)
    proc = start_server(opts, work / "tritonserver.log")
    try:
        wait_ready(opts.host, opts.http_port, 300, proc)
        yield {"grpc": f"{opts.host}:{opts.grpc_port}", "metrics": f"http://{opts.host}:{opts.metrics_port}/metrics"}
    finally:
        stop_server(proc, 2)  # nothing in flight: no need to wait for the graceful unload


@pytest.mark.integration
def test_two_servers_share_one_scene(triton, second_triton, fixture_tif, reference, tmp_path):
    before = [_hndsr_successes(s["metrics"]) for s in (triton, second_triton)]
    urls = [triton["grpc"], second_triton["grpc"]]
    report = upscale_scene(fixture_tif, tmp_path / "out.tif", urls, SceneOptions(**{**FAST, "workers": 4}))
    after = [_hndsr_successes(s["metrics"]) for s in (triton, second_triton)]
    served = [a - b for a, b in zip(after, before)]
    assert sum(served) == 12 and min(served) >= 4, served  # round-robin: 6 and 6 unless one was retried
    assert report.requests == dict(zip(urls, served))
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert (ds.read() == reference).all()


@pytest.mark.integration
def test_four_band_16bit_input_keeps_dtype_and_resamples_nir(triton, tmp_path):
    src = write_fixture(tmp_path / "rgbn16.tif", count=4, dtype="uint16")
    dst = tmp_path / "out.tif"
    report = upscale_scene(src, dst, [triton["grpc"]], SceneOptions(**{**FAST, "workers": 2}))
    assert report.stretch and report.stretch.startswith("band 1: [")
    with rasterio.open(src) as lr, rasterio.open(dst) as out:
        assert (out.count, out.dtypes, out.nodata) == (4, ("uint16",) * 4, NODATA)
        assert out.tags()["HNDSR_STRETCH"] == report.stretch
        sr = out.read().astype(np.float64)
        cubic = lr.read(4, out_shape=(out.height, out.width), resampling=Resampling.cubic)
        lr_rgb = lr.read([1, 2, 3]).astype(np.float64)
    valid = ~(sr == NODATA).all(axis=0)
    assert valid.sum() == 384 * 512 - 40 * 80
    assert (sr[3][valid] == cubic[valid]).all()  # NIR: cubic resampling, seamless across blocks
    for band in range(3):  # RGB: back in the input's range and level (the stretch saturates 2 % each side)
        lr_band = lr_rgb[band][lr_rgb[band] != NODATA]
        assert sr[band][valid].mean() == pytest.approx(lr_band.mean(), rel=0.03)
        assert lr_band.min() <= sr[band][valid].min() and sr[band][valid].max() <= lr_band.max()


@pytest.mark.integration
def test_cli_folder_form_grey_and_given_range(triton, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_fixture(folder / "grey.tif", count=1, height=40, width=44)
    write_fixture(folder / "rgb16.TIFF", dtype="uint16", height=40, width=44)
    (folder / "notes.txt").write_text("not a raster")
    args = ["upscale-scene", str(folder), str(out), "--url", triton["grpc"], "--steps", "0", "--scale", "2"]
    result = CliRunner().invoke(cli, [*args, "--range", "900", "10335", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["grey.tif", "rgb16.TIFF"]
    with rasterio.open(out / "grey.tif") as grey, rasterio.open(out / "rgb16.TIFF") as rgb:
        assert (grey.count, grey.dtypes[0], grey.shape) == (1, "uint8", (80, 88))
        assert (rgb.count, rgb.dtypes[0], rgb.shape) == (3, "uint16", (80, 88))
        assert "[900, 10335]" in rgb.tags()["HNDSR_STRETCH"]
        values = rgb.read()
    assert values[values != NODATA].min() >= 900 and values.max() <= 10335


@pytest.mark.integration
def test_the_server_serves_its_tiling_over_grpc_and_http(triton):
    """Scene mode aligns chunks to the server's canvas tiling, which the server owns and serves."""
    for url, protocol in ((triton["grpc"], "grpc"), (triton["http"], "http")):
        with HNDSRClient(url, protocol) as client:
            assert client.tiling() == {
                "tile": TILE,
                "overlap": TILE_OVERLAP,
                "latent_factor": LATENT_FACTOR,
                "min_model_scale": MIN_MODEL_SCALE,
            }
