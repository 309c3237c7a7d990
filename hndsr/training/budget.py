"""The step/wall-time budget of a resumable fine-tune (``hndsr.training.distill``, ``hndsr.training.adversarial``).

Owns the progress (steps done or seconds spent, whichever is further), the running mean of the
logged losses, when to report and checkpoint, and the JSON-lines log; the caller owns the model,
what a step does and how it is scored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


class Budget:
    """``while budget.active(): ...; budget.tick(losses)``, then ``budget.finish()``.

    ``state`` ({"step", "elapsed"}) is updated in place, so a checkpoint that saves it resumes
    the clock. Each report row, {"step", "elapsed_s", <mean of each loss>}, goes through
    ``score(row)`` (which adds the model's scores to it), then to stdout and the ``log`` file;
    ``save()`` writes a checkpoint.
    """

    def __init__(
        self,
        state: dict,
        steps: int,
        seconds: float,
        score: Callable[[dict], None],
        save: Callable[[], None],
        report_seconds: float = 300.0,
        checkpoint_seconds: float = 600.0,
        *,
        log: Path | None = None,
    ) -> None:
        self.state, self.steps, self.seconds = state, steps, seconds
        self._score, self._save, self.log = score, save, log
        self.report_seconds, self.checkpoint_seconds = report_seconds, checkpoint_seconds
        self._t0 = time.time() - state["elapsed"]
        self._last_report = self._last_save = time.time()
        self._losses: dict[str, list[float]] = {}

    def progress(self) -> float:
        frac = self.state["step"] / max(self.steps, 1)
        if self.seconds:
            frac = max(frac, self.state["elapsed"] / self.seconds)
        return frac

    def active(self) -> bool:
        return self.progress() < 1.0

    def tick(self, losses: dict[str, float]) -> None:
        """Count one step; report and checkpoint when their intervals have passed."""
        for name, value in losses.items():
            self._losses.setdefault(name, []).append(value)
        self.state["step"] += 1
        self.state["elapsed"] = time.time() - self._t0
        now = time.time()
        if now - self._last_report >= self.report_seconds:
            self._last_report = now
            self._emit()
        if now - self._last_save >= self.checkpoint_seconds:
            self._last_save = now
            self._save()

    def finish(self) -> None:
        """Final checkpoint and report."""
        self._save()
        self._emit()

    def report(self, row: dict) -> None:
        """Score ``row``, print it and append it to the log (also for rows outside the loop)."""
        self._score(row)
        print(json.dumps(row), flush=True)
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def _emit(self) -> None:
        means = {k: round(sum(v) / len(v), 5) for k, v in self._losses.items() if v}
        self._losses = {}
        self.report({"step": self.state["step"], "elapsed_s": round(self.state["elapsed"]), **means})
