"""The evaluation command on tiny fixtures: metrics, baselines and the outputs a person reads."""

import numpy as np
import pytest
from PIL import Image

from hndsr.evaluation.baselines import bicubic
from hndsr.evaluation.evaluate import evaluate, load_pairs
from hndsr.evaluation.metrics import psnr_y, ssim_y
from hndsr.evaluation.niqe import niqe

from .conftest import FIXTURES


def test_metrics_behave():
    hr = np.asarray(Image.open(FIXTURES / "teak_0.png").convert("RGB"))
    assert psnr_y(hr, hr, 4) == float("inf") and ssim_y(hr, hr, 4) == pytest.approx(1.0)
    noisy = np.clip(hr + np.random.default_rng(0).normal(0, 8, hr.shape), 0, 255).astype(np.uint8)
    assert 25 < psnr_y(noisy, hr, 4) < 35
    blurred = bicubic(bicubic(hr, (32, 32)), hr.shape[:2])
    # NIQE: a blurred image is less natural than the original.
    assert niqe(blurred, 4) > niqe(hr, 4)


def test_pairs_follow_protocol():
    pairs = load_pairs(FIXTURES, scale=3)
    assert all(p.hr.shape[0] % 3 == 0 and p.lr.shape[0] * 3 == p.hr.shape[0] for p in pairs)


def test_evaluate_writes_table_and_grid(model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for path in sorted(FIXTURES.glob("teak_*.png"))[:2]:
        (data / path.name).write_bytes(path.read_bytes())
    roofs = load_pairs(FIXTURES, scale=4)[:1]
    result = evaluate(data, 4, [0, 2], model, None, [], tmp_path / "out", grid_extra=roofs)
    tmp_path = tmp_path / "out"
    names = set(result["summary"])
    assert names == {"bicubic", "SPAN x4 ch48", "HNDSR steps=0 (PyTorch)", "HNDSR steps=2 (PyTorch)"}
    # The public model beats bicubic (the bench extra is part of the test environment: no skip).
    span, bic = result["summary"]["SPAN x4 ch48"], result["summary"]["bicubic"]
    assert span["psnr_y"] > bic["psnr_y"] and span["haarpsi"] > bic["haarpsi"]
    assert 0 < result["hr_periodic_ratio"] < 50
    table = (tmp_path / "results.md").read_text()
    assert "| bicubic |" in table and "NIQE" in table and "| HR itself |" in table
    # 4 method columns + LR + HR; 2 scored rows + 1 extra row of 128 px crops zoomed 2x (+ labels).
    assert Image.open(tmp_path / "grid.png").size == (6 * 256, 3 * (256 + 18))


def test_summary_tables_prefer_the_served_rows_and_mark_missing_ones():
    from hndsr.evaluation.evaluate import summary_tables

    def result(scale: int, psnr: float) -> dict:
        row = {"psnr_y": psnr, "ssim_y": 0.7, "haarpsi": 0.7, "niqe": 5.0, "detail": 0.3, "grain_per_detail": 1.1,
               "periodic_ratio": 6.0}  # fmt: skip
        summary = {"bicubic": {**row, "psnr_y": psnr - 1}, "HNDSR steps=0 (PyTorch)": {**row, "psnr_y": psnr - 0.5},
                   "HNDSR steps=0 (Triton)": row}  # fmt: skip
        return {"scale": scale, "summary": summary, "hr_periodic_ratio": 5.0}

    text = summary_tables({"A": {2: result(2, 30.0), 4: result(4, 26.0)}, "B": {4: result(4, 34.0)}})
    lines = text.splitlines()
    assert lines[0] == "| PSNR-Y (dB) | A 2× | A 4× | B 2× | B 4× |"
    assert "| HNDSR steps 0 | 30.00 | 26.00 | – | 34.00 |" in lines  # the Triton row, not PyTorch's
    assert "| SPAN | – | – | – | – |" in lines
    assert any(line.startswith("| HR | – / – / – / 1.00 / 1.00 / 5.0") for line in lines)
