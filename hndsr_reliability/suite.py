"""The driver: every scenario against one fresh ``hndsr serve``, and the ``hndsr-reliability`` command."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import typer

from hndsr_reliability.faults import crash, deadline, drain, front_crash, overload
from hndsr_reliability.long_soak import long_soak
from hndsr_reliability.profile import FULL, QUICK, Profile, Report
from hndsr_reliability.served import Served
from hndsr_reliability.soak import soak


def run_suite(
    profile: Profile,
    work: Path | None = None,
    echo: Callable[[str], None] = print,
    long_soak_requests: int = 0,
) -> Report:
    """Every scenario against one fresh ``hndsr serve``; with ``long_soak_requests``, only the long soak."""
    report = Report()
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="hndsr-reliability-")
        work = Path(tmp.name)
    served = Served(work, profile)
    t0 = time.monotonic()
    try:
        startup = served.wait_ready()
        echo(f"hndsr serve ready in {startup:.0f}s (log: {served.log_path})")
        if long_soak_requests:
            long_soak(served, profile, report, long_soak_requests, ("unet", "encoder"))
            return report
        scenarios = (("soak", soak), ("overload", overload), ("deadline", deadline), ("crash", crash))
        if profile.front_crash:
            scenarios = (*scenarios, ("front crash", front_crash))
        for name, scenario in scenarios:
            t = time.monotonic()
            scenario(served, profile, report)
            echo(f"{name}: {time.monotonic() - t:.0f}s")
        t = time.monotonic()
        drain(served, profile, report)
        echo(f"drain: {time.monotonic() - t:.0f}s")
    finally:
        served.stop()
        report.details["serve_log_tail"] = served.log()[-4000:]
        report.details["wall_s"] = time.monotonic() - t0
        if tmp is not None:
            tmp.cleanup()
    return report


app = typer.Typer(
    add_completion=False, help="Overload, deadline, crash, drain, soak and determinism against a real hndsr serve."
)


@app.command()
def reliability(
    quick: bool = typer.Option(False, "--quick", help="the CI version (relaxed timing targets)"),
    soak: int | None = typer.Option(None, help="soak requests after the warm-up (default 300, quick 24)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the table and details as JSON"),
    work: Path | None = typer.Option(None, help="work directory (default: a temporary one)"),
    long_soak_requests: int = typer.Option(
        0, "--long-soak", help="instead of the suite: this many mixed requests (up to 2 MP) with 2 stage crashes"
    ),
) -> None:
    """Run every scenario against a fresh hndsr serve and print the table; exit status 1 if a target is missed."""
    profile = QUICK if quick else FULL
    if soak:
        profile.soak_requests = soak
    report = run_suite(profile, work, long_soak_requests=long_soak_requests)
    print(f"\nHNDSR reliability ({profile.name}, {report.details['wall_s']:.0f}s)\n")
    print(report.markdown())
    if json_out:
        json_out.write_text(
            json.dumps({"rows": [asdict(r) for r in report.rows], "details": report.details}, indent=1, default=str)
        )
    if not report.passed:
        print("\nserve log tail:\n" + report.details["serve_log_tail"])
    raise typer.Exit(0 if report.passed else 1)


def main(argv: list[str] | None = None) -> None:
    """``hndsr-reliability`` (its console script)."""
    app(args=argv, prog_name="hndsr-reliability")
