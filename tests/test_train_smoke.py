"""A few training steps of every phase on a tiny fixture, so the training code cannot rot."""

import csv

import torch

from hndsr.models.hndsr import HNDSR
from hndsr.training.config import TrainConfig
from hndsr.training.trainer import harmonic_error, plot_log, train

from .conftest import FIXTURES


def test_train_all_phases_and_resume(tmp_path):
    cfg = TrainConfig(
        data=str(FIXTURES / "train"),
        val=str(FIXTURES),
        out=str(tmp_path / "run"),
        regression_steps=3,
        diffusion_steps=3,
        degrid_steps=2,
        batch=2,
        patch=64,
        eval_seconds=0,
        checkpoint_seconds=0,
        threads=1,
        weights_out=str(tmp_path / "w.safetensors"),
    )
    weights = train(cfg)
    model = HNDSR.load(weights)
    assert float(model.residual_scale) != 1.0  # estimated at the start of the diffusion phase
    assert HNDSR.metadata(weights)["train_phase"] == "diffusion"
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [(r["phase"], r["step"]) for r in rows] == [
        ("regression", "3"),
        ("degrid", "2"),
        ("diffusion", "3"),
    ]
    assert rows[0]["val_psnr_y"] and rows[1]["val_periodic"]  # quick validation ran
    # Resuming a finished run does no more steps and keeps the weights loadable.
    cfg.diffusion_steps = 4
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert (rows[-1]["phase"], rows[-1]["step"]) == ("diffusion", "4")
    plot_log(tmp_path / "run" / "log.csv", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # Fine-tuning from committed weights restarts the named phase.
    ft = {"out": str(tmp_path / "ft"), "init": str(weights), "restart_phase": "degrid"}
    train(TrainConfig(**{**cfg.__dict__, **ft}))
    rows = list(csv.DictReader((tmp_path / "ft" / "log.csv").open()))
    assert [(r["phase"], r["step"]) for r in rows] == [("degrid", "2"), ("diffusion", "4")]


def test_harmonic_error_sees_a_4px_grid_and_not_noise():
    torch.manual_seed(0)
    hr = torch.rand(2, 3, 64, 64)
    grid = torch.zeros(1, 1, 64, 64)
    grid[..., ::4, ::4] = 0.05
    noise = torch.randn(2, 3, 64, 64) * 0.05 / 4  # same total energy as the grid
    with_grid = harmonic_error(hr + grid, hr) / torch.mean((grid.expand(2, 3, 64, 64)) ** 2)
    with_noise = harmonic_error(hr + noise, hr) / torch.mean(noise**2)
    assert with_grid > 20 * with_noise
