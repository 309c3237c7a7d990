"""What a run does (``Profile``: the quick CI run and the full one) and what it reports (``Report``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hndsr.config import STAGES


@dataclass
class Profile:
    name: str
    max_inflight: int = 4
    max_running: int = 2
    overload_factor: int = 4
    """Concurrent clients = this x max_inflight (the issue's "4x capacity")."""
    overload_rounds: int = 1
    overload_job: tuple[int, float, int] = (96, 4.0, 2)
    """LR side, scale, DDIM steps of each overload request."""
    deadline_s: float = 2.0
    deadline_job: tuple[int, float, int] = (128, 4.0, 8)
    crash_models: tuple[str, ...] = STAGES
    stop_models: tuple[str, ...] = ()
    """Stubs frozen with SIGSTOP ("stops answering") instead of killed."""
    soak_requests: int = 40
    soak_warmup: int = 15
    """Random requests after the warm-up set (``_warmup_plan``, repeated ``soak_warmup_repeats`` times)."""
    soak_warmup_repeats: int = 1
    soak_clients: int = 2
    drain_job: tuple[int, float, int] = (96, 4.0, 4)
    drain_grace_s: float = 60.0
    timing_slack: float = 1.0
    """Multiplies every latency target (5 for CI on a busy 2-core machine)."""
    front_crash: bool = True
    """Kill a front stub under 4 clients, without and with the client's retries (the retry logic
    itself is unit-tested, so the CI run skips it)."""


QUICK = Profile(
    "quick",
    soak_requests=24,
    soak_warmup=5,
    # The unet's heal is also in CI twice: with the shm pools (test_serve_cli) and the alert
    # (test_prometheus_live).
    crash_models=("encoder", "prior", "decoder", "hndsr_core"),
    timing_slack=5.0,
    front_crash=False,
)
FULL = Profile(
    "full",
    overload_rounds=3,
    overload_job=(128, 4.0, 4),
    crash_models=(*STAGES, "hndsr_core", "hndsr"),
    stop_models=("unet",),
    soak_requests=300,
    soak_warmup=250,  # Triton's gRPC allocations settle after a few hundred requests (README)
    soak_warmup_repeats=2,
)


@dataclass
class Row:
    scenario: str
    measure: str
    value: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def add(self, scenario: str, measure: str, value, target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(scenario, measure, str(value), target, ok))

    @property
    def passed(self) -> bool:
        return all(r.ok is not False for r in self.rows)

    def markdown(self) -> str:
        lines = ["| scenario | measure | value | target | ok |", "|---|---|---|---|---|"]
        for r in self.rows:
            mark = "" if r.ok is None else ("yes" if r.ok else "**NO**")
            lines.append(f"| {r.scenario} | {r.measure} | {r.value} | {r.target} | {mark} |")
        return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
