"""A few training steps of every stage on a tiny fixture, so the training code cannot rot."""

import csv

from hndsr.config import TrainConfig
from hndsr.models.hndsr import HNDSR
from hndsr.train import plot_log, train

from .conftest import FIXTURES


def test_train_all_stages_and_resume(tmp_path):
    cfg = TrainConfig(
        data=str(FIXTURES / "train"),
        val=str(FIXTURES),
        out=str(tmp_path / "run"),
        ae_steps=3,
        prior_steps=3,
        unet_steps=3,
        batch=2,
        patch=64,
        prior_patch=64,
        checkpoint_every=2,
        eval_every=3,
        threads=1,
        weights_out=str(tmp_path / "w.safetensors"),
    )
    weights = train(cfg)
    model = HNDSR.load(weights)
    assert float(model.residual_scale) != 1.0  # estimated at the start of the UNet stage
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [r["stage"] for r in rows] == ["autoencoder", "prior", "unet"]
    assert rows[0]["val_psnr_y"]  # quick validation ran
    # Resuming a finished run does no more steps and keeps the weights loadable.
    cfg.unet_steps = 4
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert rows[-1]["stage"] == "unet" and rows[-1]["step"] == "4"
    plot_log(tmp_path / "run" / "log.csv", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
