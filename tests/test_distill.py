"""Pruning the FNO prior keeps the channels that carry signal; distillation runs, resumes and
exports weights that load as a narrower model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hndsr.models.hndsr import HNDSR
from hndsr.training.data import PatchBank
from hndsr.training.distill import DistillConfig, channel_energy, distill, prune_prior

from .conftest import FIXTURES


def _wide_model() -> HNDSR:
    """Random weights with the original 64/64 prior (the teacher's shape)."""
    torch.manual_seed(0)
    model = HNDSR(prior_width=64, prior_hidden=64)
    with torch.no_grad():
        model.prior.delta_head.weight.normal_(0, 0.02)
    return model.eval()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 48, 16, 16, generator=g), torch.tensor([[4.0], [2.5]])


@torch.no_grad()
def test_pruning_drops_exactly_the_silent_channels():
    """A teacher whose last residual and hidden channels carry nothing (their producing weights are
    zero) is reproduced exactly by the pruned student, which must therefore have picked the others."""
    prior = _wide_model().prior
    width, hidden = 40, 24
    for block in prior.blocks:
        block.local.weight[hidden:] = 0
        block.local.bias[hidden:] = 0
        block.spectral.weight_re[:, hidden:] = 0
        block.spectral.weight_im[:, hidden:] = 0
        for start in (0, 64):  # FiLM: gamma rows, then beta rows
            block.film.weight[start + hidden : start + 64] = 0
            block.film.bias[start + hidden : start + 64] = 0
        block.out.weight[width:] = 0
        block.out.bias[width:] = 0
    prior.lift.weight[width:] = 0
    prior.lift.bias[width:] = 0
    energy = channel_energy(prior, [_inputs(1)])
    assert energy["stream"][width:].abs().max() == 0 and energy["stream"][:width].min() > 0
    student = prune_prior(prior, width, hidden, energy)
    assert student.lift.out_channels == width and student.blocks[0].local.out_channels == hidden
    for got, want in zip(student(*_inputs(2)), prior(*_inputs(2))):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_pruning_to_full_width_is_the_identity():
    prior = _wide_model().prior
    student = prune_prior(prior, 64, 64, channel_energy(prior, [_inputs(1)]))
    for got, want in zip(student(*_inputs(2)), prior(*_inputs(2))):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _tiny_run(tmp_path, **settings) -> tuple[DistillConfig, Path]:
    """A distillation of a random wide teacher into a 32/16 prior on the training fixture."""
    teacher = tmp_path / "teacher.safetensors"
    _wide_model().save(teacher)
    cfg = DistillConfig(
        teacher=str(teacher),
        data=str(FIXTURES / "train"),
        out=str(tmp_path / "run"),
        width=32,
        hidden=16,
        batch=2,
        patch=64,
        threads=1,
        **settings,
    )
    return cfg, teacher


def test_distill_runs_resumes_and_exports_a_narrow_model(tmp_path):
    cfg, teacher = _tiny_run(tmp_path, val=str(FIXTURES), steps=3)
    weights = distill(cfg)
    model = HNDSR.load(weights)
    assert model.architecture() == {"prior_width": 32, "prior_hidden": 16}
    assert HNDSR.metadata(weights)["distill_step"] == "3"
    # The other stages are the teacher's.
    torch.testing.assert_close(model.decoder.state_dict(), HNDSR.load(teacher).decoder.state_dict())
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 3] and rows[0]["teacher_val_psnr_y"] > 0
    cfg.steps = 5  # resume from the checkpoint and train two more steps
    distill(cfg)
    assert HNDSR.metadata(weights)["distill_step"] == "5"


def test_distill_can_continue_from_a_narrow_prior_with_a_pixel_loss_at_chosen_scales(tmp_path, monkeypatch):
    start = tmp_path / "start.safetensors"
    torch.manual_seed(1)  # other stages than the teacher's (_wide_model seeds 0)
    HNDSR(prior_width=32, prior_hidden=16).save(start)
    drawn: list[float] = []
    batch = PatchBank.batch

    def recording(self, size, scale=None):
        out = batch(self, size, scale)
        drawn.append(float(out[2][0]))  # the scale the batch was drawn at
        return out

    monkeypatch.setattr(PatchBank, "batch", recording)
    cfg, teacher = _tiny_run(
        tmp_path, val=str(FIXTURES), steps=4, gt_weight=1.0, init_student=str(start), scales=(8.0, 6.0)
    )
    model = HNDSR.load(distill(cfg))
    assert model.architecture() == {"prior_width": 32, "prior_hidden": 16}
    # It trained the given prior (not a pruned teacher): close to it, not equal.
    delta = [(a - b).abs().max() for a, b in zip(model.prior.parameters(), HNDSR.load(start).prior.parameters())]
    assert 0 < max(delta) < 0.05
    # The export keeps the start file's other stages, not the teacher's.
    torch.testing.assert_close(model.decoder.state_dict(), HNDSR.load(start).decoder.state_dict())
    assert any(
        (a - b).abs().max() > 0 for a, b in zip(model.decoder.parameters(), HNDSR.load(teacher).decoder.parameters())
    )
    assert drawn and set(drawn) <= {8.0, 6.0}
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert {"val_psnr_y", "val_psnr_y_x6", "val_psnr_y_x8"} <= rows[-1].keys()
