"""Quality metrics against independent references or properties that a wrong formula breaks."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hndsr.evaluation.metrics import haarpsi, periodic_ratio, psnr_y, texture
from hndsr_client.image_io import read_rgb

from .conftest import FIXTURES

REFERENCE_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "periodic_ratio.py"


def _reference(path: Path):
    """The shared reference tool at ``path`` as a module, or None where it is not beside the clone."""
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(path.stem + "_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hr() -> np.ndarray:
    return read_rgb(FIXTURES / "teak_1.png")


def _with_grid(image: np.ndarray) -> np.ndarray:
    grid = image.astype(np.int16)
    grid[::4, ::4] += 6
    return np.clip(grid, 0, 255).astype(np.uint8)


def test_periodic_ratio_equals_the_reference_definition():
    """Against values the reference tool (../shared/tools/periodic_ratio.py) computed for the
    fixtures, committed so that a clone with nothing beside it runs this test; where the tool is
    beside the clone (CI), it is run again so that its values and the committed ones agree."""
    expected = json.loads((FIXTURES / "periodic_ratio_reference.json").read_text())
    ref = _reference(REFERENCE_TOOL)
    for name, values in expected.items():
        image = read_rgb(FIXTURES / name)
        for kind, case in (("plain", image), ("grid_4px_plus6", _with_grid(image))):
            assert periodic_ratio(case) == pytest.approx(values[kind], rel=1e-12), (name, kind)
            if ref is not None:
                assert ref.ratio(case) == pytest.approx(values[kind], rel=1e-12), (name, kind)


def test_periodic_ratio_flags_a_4px_grid_not_a_smooth_image(hr):
    grid = hr.astype(np.int16)
    grid[::4, ::4] += 6
    blurred = np.asarray(Image.fromarray(hr).resize((hr.shape[1] // 2, hr.shape[0] // 2)).resize(hr.shape[1::-1]))
    assert periodic_ratio(np.clip(grid, 0, 255).astype(np.uint8)) > 5 * periodic_ratio(hr)
    assert periodic_ratio(blurred) < 20


def test_haarpsi_is_one_on_identity_symmetric_and_falls_with_noise(hr):
    rng = np.random.default_rng(0)
    assert haarpsi(hr, hr) == pytest.approx(1.0, abs=1e-9)
    noisy = [np.clip(hr + rng.normal(0, s, hr.shape), 0, 255).astype(np.uint8) for s in (4, 12, 30)]
    scores = [haarpsi(n, hr) for n in noisy]
    assert scores[0] > scores[1] > scores[2] > 0.2
    assert haarpsi(noisy[1], hr) == pytest.approx(haarpsi(hr, noisy[1]), abs=1e-12)
    # Less structure-damaging but same-MSE distortion (a constant offset) scores higher than noise.
    offset = np.clip(hr.astype(float) + 12, 0, 255).astype(np.uint8)
    assert psnr_y(offset, hr, 0) < psnr_y(noisy[1], hr, 0) + 3 and haarpsi(offset, hr) > scores[1]


TEXTURE_TOOL = REFERENCE_TOOL.with_name("texture.py")


def _texture_cases(hr: np.ndarray) -> dict[str, np.ndarray]:
    """A blurry result (bicubic 4x down and up) and the same with white noise (sigma 3)."""
    small = Image.fromarray(hr).resize((hr.shape[1] // 4, hr.shape[0] // 4), Image.BICUBIC)
    blur = np.asarray(small.resize(hr.shape[1::-1], Image.BICUBIC))
    noisy = np.clip(blur + np.random.default_rng(1).normal(0, 3, hr.shape), 0, 255).astype(np.uint8)
    return {"bicubic": blur, "bicubic_noise3": noisy}


def test_texture_equals_the_reference_definition():
    """detail and grain against values ../shared/tools/texture.py computed (committed), and
    against the tool itself where it is beside the clone."""
    expected = json.loads((FIXTURES / "texture_reference.json").read_text())
    ref = _reference(TEXTURE_TOOL)
    for name, cases in expected.items():
        hr = read_rgb(FIXTURES / name)
        for kind, sr in _texture_cases(hr).items():
            detail, grain = texture(sr, hr)
            assert detail == pytest.approx(cases[kind]["detail"], rel=1e-9), (name, kind)
            assert grain == pytest.approx(cases[kind]["grain"], rel=1e-9), (name, kind)
            if ref is not None:
                ref_grain, ref_detail, _ = ref.texture(sr, hr)
                assert (detail, grain) == pytest.approx((ref_detail, ref_grain), rel=1e-9), (name, kind)


def test_texture_is_one_on_hr_and_noise_raises_grain_more_than_detail(hr):
    assert texture(hr, hr) == pytest.approx((1.0, 1.0))
    cases = _texture_cases(hr)
    (d_blur, g_blur), (d_noisy, g_noisy) = texture(cases["bicubic"], hr), texture(cases["bicubic_noise3"], hr)
    assert d_blur < 0.5
    assert g_noisy / d_noisy > g_blur / d_blur
