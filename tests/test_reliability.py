"""The short reliability suite against a real ``hndsr serve`` (the full one: ``hndsr-reliability``).

Overload (16 clients at 4x capacity), deadline, kill -9 of every stage stub, soak with
determinism, and a draining SIGTERM; timing targets are relaxed five-fold (``QUICK.timing_slack``)
because CI shares two busy cores. About 40 s.
"""

from __future__ import annotations

import pytest

from hndsr_reliability import QUICK, run_suite

pytestmark = pytest.mark.integration


def test_quick_reliability_suite(tmp_path):
    from hndsr.cli import ensure_exported

    ensure_exported()
    report = run_suite(QUICK, tmp_path)
    table = report.markdown()
    print("\n" + table)
    failed = [f"{r.scenario}: {r.measure} = {r.value} (target {r.target})" for r in report.rows if r.ok is False]
    assert not failed, "\n".join(failed) + "\n\n" + table + "\n\nserve log:\n" + report.details["serve_log_tail"]
