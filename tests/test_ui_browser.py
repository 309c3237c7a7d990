"""The Gradio UI against a real Triton, driven in real headless Chromium (Debian's package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from .conftest import ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.browser]
ARTIFACTS = ROOT / "artifacts"
EXAMPLES = ROOT / "ui" / "hndsr_ui" / "examples"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Debian's chromium is required for the browser test (apt-get install chromium)")


def wait_for_text(page, text: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function("t => document.body.innerText.includes(t)", arg=text, timeout=timeout_ms)


@pytest.fixture(scope="module")
def ui_url(triton, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    metrics = triton["metrics"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hndsr_ui.app",
            "--grpc",
            triton["grpc"],
            "--http",
            triton["http"],
            "--metrics",
            metrics,
            "--port",
            str(port),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"UI did not start:\n{log.read_text()}")
    yield url
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=_chromium(),
            headless=True,
            args=["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, ui_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    external: list[str] = []

    def guard(route):
        host = urllib.parse.urlparse(route.request.url).hostname
        if host not in ("127.0.0.1", "localhost", None) and not route.request.url.startswith("data:"):
            external.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", guard)
    page.goto(ui_url)
    page.external_requests = external
    yield page
    page.close()


def test_upscale_in_browser(page, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#health").get_by_text("online").wait_for(timeout=30_000)
    page.locator("#upload input[type=file]").set_input_files(str(EXAMPLES / "teak_043_crop.tif"))
    page.locator("#preview img").wait_for(timeout=30_000)
    page.locator("#scale").get_by_text("4×", exact=True).click()
    page.locator("#steps").get_by_text("0", exact=True).click()
    page.locator("#ensemble").get_by_text("2", exact=True).click()
    page.locator("#run").click()
    meta = page.locator("#metadata")
    meta.get_by_text("640×640", exact=False).wait_for(timeout=180_000)
    text = meta.inner_text()
    for field in ("latency", "tiles", "device", "precision", "model version", "seed", "GeoTIFF", "2 views"):
        assert field in text, text
    assert page.locator("#result img").count() >= 1
    # The metrics panel reads Triton's counters, which now count this request.
    page.wait_for_function("() => !document.querySelector('#metrics').innerText.includes('0 (0 / 0)')", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "ui_result.png"), full_page=True)
    # Download button serves the full-resolution GeoTIFF.
    with page.expect_download(timeout=30_000) as dl:
        page.locator("#download").click()
    path = tmp_path / dl.value.suggested_filename
    assert path.name.endswith("_e2.tif"), path.name
    dl.value.save_as(path)
    import rasterio

    with rasterio.open(path) as ds, rasterio.open(EXAMPLES / "teak_043_crop.tif") as src:
        assert (ds.width, ds.height) == (640, 640)
        assert ds.crs == src.crs and ds.crs is not None
        assert (ds.transform.a, -ds.transform.e) == pytest.approx((0.025, 0.025))
        assert (ds.transform.c, ds.transform.f) == pytest.approx((src.transform.c, src.transform.f))


def test_progress_bar_follows_server_steps(page):
    """With DDIM steps, the progress shown comes from the server's PROGRESS stream."""
    page.locator("#scale").get_by_text("2×", exact=True).click()
    page.locator("#steps").get_by_text("8", exact=True).click()
    page.locator("#random-seed").get_by_text("Random seed").click()
    page.locator("#seed input").fill("12345")
    page.locator("#run").click()
    wait_for_text(page, "DDIM step", timeout_ms=120_000)  # only the server's PROGRESS stream writes this
    page.screenshot(path=str(ARTIFACTS / "ui_progress.png"), full_page=True)
    page.locator("#metadata").get_by_text("320×320", exact=False).wait_for(timeout=180_000)
    # The table's text is "field", "value", then one line per field and per value.
    lines = [line.strip() for line in page.locator("#metadata").inner_text().splitlines() if line.strip()]
    body = lines[lines.index("value") + 1 :]
    rows = dict(zip(body[::2], body[1::2]))
    assert rows["steps"].strip() == "8", rows
    seed_used = page.locator("#seed input").input_value()
    assert seed_used != "12345"  # a random seed replaced the typed one ...
    assert rows["seed"].strip() == seed_used  # ... and the seed shown is the one that was used
    page.locator("#random-seed").get_by_text("Random seed").click()


def test_invalid_input_shows_error(page, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tiny)
    page.locator("#upload").get_by_label("Clear").click()
    page.locator("#upload input[type=file]").set_input_files(str(tiny))
    page.locator("#preview img").wait_for(timeout=30_000)
    page.locator("#run").click()
    wait_for_text(page, "Invalid input: IMAGE sides must be >= 8")
    page.screenshot(path=str(ARTIFACTS / "ui_invalid.png"), full_page=True)
    assert page.external_requests == []


def test_server_down_message(browser):
    """A UI pointed at a Triton that is not there says so (badge and error)."""
    port = free_port()
    dead = "127.0.0.1:9"  # the discard port: nothing listens there
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hndsr_ui.app",
            "--grpc",
            dead,
            "--http",
            dead,
            "--metrics",
            f"http://{dead}/metrics",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        page = browser.new_page()
        page.goto(url)
        page.locator("#health").get_by_text("offline").wait_for(timeout=30_000)
        page.locator("#upload input[type=file]").set_input_files(str(EXAMPLES / "teak_050_crop.tif"))
        page.locator("#preview img").wait_for(timeout=30_000)
        page.locator("#run").click()
        wait_for_text(page, "Server down or unreachable")
        page.close()
    finally:
        proc.terminate()
        proc.wait(20)
