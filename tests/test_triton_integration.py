"""Integration: a real tritonserver (CPU, nvidia-pytriton bundle) serving model_repository/."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from hndsr.inference.pipeline import canvas_plan
from hndsr_client import HNDSRClient, InvalidInputError
from hndsr_client.image_io import read_rgb

from .conftest import FIXTURES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return read_rgb(FIXTURES / "teak_0.png")[:48, :64].copy()


@pytest.fixture(params=["grpc", "http"])
def client(request, triton):
    with HNDSRClient(triton[request.param], request.param) as c:
        yield c


def test_health_and_metadata(client):
    assert client.health() == {"live": True, "ready": True, "model_ready": True}
    meta = client.metadata()
    names = {t["name"] for t in meta["metadata"]["inputs"]}
    assert names == {"IMAGE", "SCALE", "STEPS", "SEED", "ETA", "ENSEMBLE"}


def test_output_shape_is_scale_times_input(client, small):
    result = client.upscale(small, scale=4.0, steps=2, seed=0)
    assert result.image.shape == (192, 256, 3) and result.image.dtype == np.uint8
    info = result.info
    assert info["steps"] == 2 and info["tiles"] == canvas_plan(192, 256).count == 2 and info["device"] == "cpu"
    assert set(info["stage_ms"]) == {"encoder", "prior", "unet", "decoder"}
    result = client.upscale(small, scale=2.5, steps=0)
    assert result.image.shape == (120, 160, 3)


def test_same_seed_same_bytes_other_seed_differs(client, small):
    a = client.upscale(small, scale=3.0, steps=3, seed=11).image
    b = client.upscale(small, scale=3.0, steps=3, seed=11).image
    c = client.upscale(small, scale=3.0, steps=3, seed=12).image
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_self_ensemble_averages_the_mirrored_request(client, small):
    plain = client.upscale(small, scale=2.0, steps=0)
    mirror = client.upscale(np.ascontiguousarray(small[:, ::-1]), scale=2.0, steps=0).image[:, ::-1]
    pair = client.upscale(small, scale=2.0, steps=0, ensemble=2)
    assert pair.info["ensemble"] == 2 and pair.info["tiles"] == 2 * plain.info["tiles"]
    expected = (plain.image.astype(float) + mirror) / 2
    assert np.abs(pair.image - expected).max() <= 1  # each single view was rounded to uint8 here
    assert not np.array_equal(pair.image, plain.image)


def test_grpc_and_http_agree(triton, small):
    with HNDSRClient(triton["grpc"], "grpc") as g, HNDSRClient(triton["http"], "http") as h:
        assert np.array_equal(g.upscale(small, steps=2, seed=5).image, h.upscale(small, steps=2, seed=5).image)


def test_zero_steps_deterministic_and_close_to_input(client, small):
    a = client.upscale(small, scale=4.0, steps=0, seed=1)
    b = client.upscale(small, scale=4.0, steps=0, seed=2)
    assert np.array_equal(a.image, b.image) and a.info["steps"] == 0
    down = np.asarray(Image.fromarray(a.image).resize((64, 48), Image.BICUBIC)).astype(float)
    assert np.abs(down - small).mean() < 12  # a super-resolution of this image, not noise


def test_large_input_many_tiles(triton):
    base = Image.open(FIXTURES / "teak_1.png").convert("RGB")
    image = np.asarray(base.resize((550, 350), Image.BICUBIC))
    with HNDSRClient(triton["grpc"], "grpc") as c:
        result = c.upscale(image, scale=4.0, steps=0)
    assert result.image.shape == (1400, 2200, 3)
    assert result.info["tiles"] == canvas_plan(1400, 2200).count == 96
    down = np.asarray(Image.fromarray(result.image).resize((550, 350), Image.BICUBIC)).astype(float)
    assert np.abs(down - image).mean() < 12


def _raw_inputs(mod, image: np.ndarray, image_type: str = "UINT8", **scalars):
    inputs = [mod.InferInput("IMAGE", list(image.shape), image_type)]
    inputs[0].set_data_from_numpy(image)
    types = {
        "SCALE": ("FP32", np.float32),
        "STEPS": ("INT32", np.int32),
        "SEED": ("INT64", np.int64),
        "ETA": ("FP32", np.float32),
        "ENSEMBLE": ("INT32", np.int32),
    }
    for name, value in scalars.items():
        dt, np_dt = types[name]
        t = mod.InferInput(name, [1], dt)
        t.set_data_from_numpy(np.array([value], dtype=np_dt))
        inputs.append(t)
    return inputs


BAD = [
    ("float image", np.zeros((16, 16, 3), np.float32), "FP32", {}, "IMAGE"),
    ("rank 2", np.zeros((16, 16), np.uint8), "UINT8", {}, "IMAGE"),
    ("4 channels", np.zeros((16, 16, 4), np.uint8), "UINT8", {}, "IMAGE"),
    ("too small", np.zeros((5, 40, 3), np.uint8), "UINT8", {}, "IMAGE sides must be >= 8"),
    ("scale low", np.zeros((16, 16, 3), np.uint8), "UINT8", {"SCALE": 1.0}, "SCALE must be in [2, 8]"),
    ("scale high", np.zeros((16, 16, 3), np.uint8), "UINT8", {"SCALE": 12.0}, "SCALE must be in [2, 8]"),
    ("steps negative", np.zeros((16, 16, 3), np.uint8), "UINT8", {"STEPS": -3}, "STEPS must be in [0, 50]"),
    ("steps high", np.zeros((16, 16, 3), np.uint8), "UINT8", {"STEPS": 5000}, "STEPS must be in [0, 50]"),
    ("eta", np.zeros((16, 16, 3), np.uint8), "UINT8", {"ETA": 3.0}, "ETA must be in [0, 1]"),
    ("ensemble", np.zeros((16, 16, 3), np.uint8), "UINT8", {"ENSEMBLE": 9}, "ENSEMBLE must be in [1, 8]"),
    ("too many pixels", np.zeros((1100, 1100, 3), np.uint8), "UINT8", {"SCALE": 4.0}, "16000000 output pixels"),
]


@pytest.mark.parametrize(("case", "image", "dtype", "scalars", "expected"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_is_invalid_arg_and_server_keeps_serving(
    triton, small, protocol, case, image, dtype, scalars, expected
):
    mod = grpcclient if protocol == "grpc" else httpclient
    raw = mod.InferenceServerClient(triton[protocol])
    with pytest.raises(InferenceServerException) as err:
        raw.infer("hndsr", _raw_inputs(mod, image, dtype, **scalars))
    status = str(err.value.status())
    assert status in ("StatusCode.INVALID_ARGUMENT", "400"), status
    assert expected in err.value.message(), err.value.message()
    # The client library maps the same failure to InvalidInputError ...
    if dtype == "UINT8" and image.ndim == 3:
        with HNDSRClient(triton[protocol], protocol) as c, pytest.raises(InvalidInputError, match=expected[:10]):
            c.upscale(image, **{k.lower(): v for k, v in scalars.items()})
    # ... and the next good request still succeeds.
    ok = raw.infer("hndsr", _raw_inputs(mod, small, STEPS=0))
    assert ok.as_numpy("SR_IMAGE").shape == (192, 256, 3)


def test_prometheus_metrics(triton, small):
    with HNDSRClient(triton["grpc"]) as c:
        c.upscale(small, steps=2)
    text = urllib.request.urlopen(triton["metrics"], timeout=10).read().decode()
    lines = {line.split(" ")[0]: line.split(" ")[-1] for line in text.splitlines() if line and line[0] != "#"}
    assert float(lines['hndsr_requests_total{outcome="success"}']) >= 1
    assert float(lines["hndsr_ddim_steps_total"]) >= 2
    assert float(lines['hndsr_stage_duration_ms_total{stage="unet"}']) > 0
    assert any(k.startswith('nv_inference_request_success{model="hndsr"') for k in lines)
    assert any(k.startswith('nv_inference_request_success{model="unet"') for k in lines)


def test_client_cli_reads_avif_and_writes_png(triton, tmp_path):
    out = tmp_path / "sr.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hndsr_client.cli",
            "upscale",
            str(FIXTURES / "laodong_crop.avif"),
            str(out),
            "--scale",
            "2",
            "--steps",
            "0",
            "--url",
            triton["grpc"],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "latency=" in proc.stdout
    assert Image.open(out).size == (320, 200)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["scale"] == 2.0
    health = subprocess.run(
        [sys.executable, "-m", "hndsr_client.cli", "health", "--url", triton["http"], "--protocol", "http"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 0 and '"model_ready": true' in health.stdout


def test_streaming_progress_and_same_result(triton, small):
    seen = []
    with HNDSRClient(triton["grpc"]) as c:
        streamed = c.upscale_streaming(small, scale=2.0, steps=4, seed=3, on_progress=lambda d, t: seen.append((d, t)))
        plain = c.upscale(small, scale=2.0, steps=4, seed=3)
        assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
        assert np.array_equal(streamed.image, plain.image)
        with pytest.raises(InvalidInputError, match="STEPS must be in"):
            c.upscale_streaming(small, steps=999)
        # the stream model keeps serving after a rejected request
        assert c.upscale_streaming(small, steps=0).image.shape == (192, 256, 3)


def test_perf_analyzer_load_test(triton, tmp_path):
    """perf_analyzer (from the tritonclient wheel) drives the served model: bounded, local only.

    It checks that load testing works, not the machine's speed: a fixed request count per level
    (no stability criterion, which a busy machine fails with "Failed to obtain stable measurement")."""
    from hndsr_client.load_test import run

    image = read_rgb(FIXTURES / "teak_2.png")[:32, :32].copy()
    rows = run(triton["grpc"], image, 2.0, 0, "1:2", 3, tmp_path / "perf.csv", request_count=6)
    assert [r["Concurrency"] for r in rows] == ["1", "2"]
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert all(int(r["p50 latency"]) > 0 for r in rows)


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_cancelled_request_stops_the_ddim_loop(triton, small):
    """A gRPC client that goes away stops the server's DDIM loop between steps.

    The cancel is sent once the server is observed inside the loop (its UNet has answered a BLS
    request for this call), and the request is far too long (50 steps x 96 tiles) to finish first.
    """
    import time

    cancelled = 'hndsr_requests_total{outcome="cancelled"}'
    unet_calls = 'nv_inference_request_success{model="unet"'
    before = _metric(triton["metrics"], cancelled)
    unet_before = _metric(triton["metrics"], unet_calls)
    client = grpcclient.InferenceServerClient(triton["grpc"])
    big = np.asarray(Image.fromarray(small).resize((550, 350), Image.BICUBIC))
    inputs = _raw_inputs(grpcclient, big, STEPS=50, SCALE=4.0)
    call = client.async_infer("hndsr", inputs, callback=lambda result, error: None)
    deadline = time.monotonic() + 120
    while _metric(triton["metrics"], unet_calls) <= unet_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(triton["metrics"], unet_calls) > unet_before, "the DDIM loop never started"
    call.cancel()
    deadline = time.monotonic() + 60
    while _metric(triton["metrics"], cancelled) <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _metric(triton["metrics"], cancelled) == before + 1
    # the server still serves
    with HNDSRClient(triton["grpc"]) as c:
        assert c.upscale(small, steps=0).image.shape == (192, 256, 3)
