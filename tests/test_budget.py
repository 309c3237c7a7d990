"""The fine-tunes' step/time budget: progress, resumed clock, reports with mean losses, checkpoints."""

from __future__ import annotations

import json

from hndsr.training.budget import Budget


def test_budget_counts_steps_reports_means_and_checkpoints(tmp_path):
    rows, saves = [], []
    state = {"step": 0, "elapsed": 0.0}
    log = tmp_path / "log.jsonl"
    budget = Budget(state, 4, 0.0, rows.append, lambda: saves.append(state["step"]), 0.0, 3600.0, log=log)
    values = iter([1.0, 3.0, 5.0, 7.0])
    while budget.active():
        budget.tick({"loss": next(values)})
    budget.finish()
    assert state["step"] == 4 and budget.progress() == 1.0
    assert [r["loss"] for r in rows[:4]] == [1.0, 3.0, 5.0, 7.0]  # report interval 0: every step
    assert rows[-1] == {"step": 4, "elapsed_s": 0} and saves == [4]  # nothing left to average
    assert [json.loads(line) for line in log.open()] == rows  # the log holds exactly what was scored


def test_budget_averages_between_reports_and_resumes_its_clock():
    rows = []
    state = {"step": 10, "elapsed": 50.0}  # a resumed run: half of its 100 s spent
    budget = Budget(state, 1000, 100.0, rows.append, lambda: None, 3600.0, 3600.0)
    assert budget.progress() == 0.5 and budget.active()
    for value in (2.0, 4.0):
        budget.tick({"loss": value})
    assert rows == [] and state["elapsed"] >= 50.0
    budget.finish()
    assert rows[0]["step"] == 12 and rows[0]["loss"] == 3.0
    state["elapsed"] = 100.0
    assert not budget.active()
