"""The long soak: thousands of requests with stage crashes on the way, memory at start, middle and end."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

from hndsr_client.interface import DEFAULT_STEPS
from hndsr_reliability.profile import Profile, Report
from hndsr_reliability.served import Served
from hndsr_reliability.soak import SoakWorker


def _long_soak_plan(n: int, seed: int) -> list[dict]:
    """Mixed requests up to ~2 MP of output: steps 0 and the default, gRPC and HTTP."""
    rng = random.Random(seed)
    plan = []
    for _ in range(n):
        scale = rng.choice([2.0, 3.0, 4.0])
        big = rng.random() < 0.05
        side = rng.randrange(200, int(1414 / scale)) if big else rng.randrange(16, 129)
        shape = (side, rng.randrange(max(16, side // 2), side + 1))
        steps = rng.choice([0, DEFAULT_STEPS])
        via = rng.choice(["grpc", "http"])
        plan.append(
            {
                "kind": "valid",
                "shape": shape,
                "scale": scale,
                "steps": steps,
                "seed": rng.randrange(1 << 30),
                "via": via,
            }
        )
    return plan


def _long_soak_warmup() -> list[dict]:
    """The soak's largest requests (2 MP of output at 2x, 3x and 4x, steps 0 and the default, gRPC
    and HTTP), twice over 4 clients, so that every front and core instance has carried one: the
    stubs' shm pools grow to the largest tensors they carry and never shrink."""
    big = []
    for scale in (2.0, 3.0, 4.0):
        side = int(1414 / scale) - 1
        for steps in (0, DEFAULT_STEPS):
            for via in ("grpc", "http"):
                big.append({"kind": "valid", "shape": (side, side), "scale": scale, "steps": steps, "via": via})
    return [{**spec, "seed": 1} for spec in big * 2] + _long_soak_plan(100, 8)


def _by_model(memory: dict) -> dict[str, int]:
    """Private memory (KiB) summed per model (tritonserver itself as one), from ``Served.memory``."""
    out: dict[str, int] = {}
    for name, kb in memory["anon"].items():
        model = memory["models"].get(name, name)  # tritonserver is not a stub
        out[model] = out.get(model, 0) + kb
    return out


def long_soak(served: Served, profile: Profile, report: Report, requests: int, crashes: tuple[str, ...]) -> None:
    """``requests`` mixed requests from 4 clients after a warm-up with the largest ones; the stage
    stubs in ``crashes`` are killed at even intervals in the middle. Server memory (private + shm
    pools, and private memory per model) at start, middle and end, /dev/shm pools, and the
    outcomes by kind."""
    plan = _long_soak_plan(requests, 7)
    warm = _long_soak_warmup()
    results: list[tuple[str, str, str | None]] = []
    lock = threading.Lock()
    queue = list(warm)
    memory: dict[str, dict] = {}
    crash_at = {requests * (i + 1) // (len(crashes) + 1): stage for i, stage in enumerate(crashes)}
    done = 0

    def loop() -> None:
        nonlocal done
        worker = SoakWorker(served, profile)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    spec = queue.pop(0)
                result = worker.do(spec)
                with lock:
                    results.append(result)
                    done += 1
                    stage = crash_at.pop(done, None)
                    middle = done == requests // 2 and "middle" not in memory
                if stage:
                    (victim,) = [s for s in served.stubs().values() if s.model == stage][:1]
                    os.kill(victim.pid, signal.SIGKILL)
                if middle:
                    memory["middle"] = served.memory()
        finally:
            worker.close()

    def run() -> None:
        threads = [threading.Thread(target=loop) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run()
    served.wait_idle()
    results.clear()
    done = 0
    memory["start"] = served.memory()
    queue.extend(plan)
    t0 = time.monotonic()
    run()
    elapsed = time.monotonic() - t0
    served.wait_idle()
    memory["end"] = served.memory()
    outcomes = Counter(o for _, o, _ in results)
    errors = Counter((o, (m or "")[:60]) for _, o, m in results if o != "ok")
    mib = {k: f"{v['total_kb'] / 1024:.0f}" for k, v in memory.items()}
    shm = {k: f"{v['shm_kb'] / 1024:.0f} MiB in {len(v['regions'])} pools" for k, v in memory.items()}
    growth = (memory["end"]["total_kb"] - memory["start"]["total_kb"]) / memory["start"]["total_kb"] * 100
    injected = ", ".join(crashes) or "none"
    what = "requests (4 clients, steps 0/default, gRPC/HTTP, outputs up to 2 MP)"
    report.add("long soak", what, f"{len(results)} in {elapsed:.0f} s; stage crashes injected: {injected}")
    report.add("long soak", "outcomes", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    report.add(
        "long soak", "errors by kind", "; ".join(f"{o} x{n}: {m}" for (o, m), n in errors.most_common(5)) or "none"
    )
    report.add(
        "long soak",
        "server memory (private + shm pools) start / middle / end",
        f"{mib.get('start')} / {mib.get('middle', '–')} / {mib.get('end')} MiB ({growth:+.1f}%)",
        "< 5%",
        growth < 5,
    )
    report.add("long soak", "/dev/shm pools mapped by the server start / end", f"{shm['start']} / {shm['end']}")
    per_model = {k: _by_model(v) for k, v in memory.items()}
    changes = sorted(
        ((m, per_model["start"].get(m, 0), per_model["end"].get(m, 0)) for m in per_model["end"]),
        key=lambda row: -abs(row[2] - row[1]),
    )
    report.add(
        "long soak",
        "private memory per model start -> end (largest changes)",
        "; ".join(f"{m} {a / 1024:.0f} -> {b / 1024:.0f} MiB" for m, a, b in changes[:4]),
    )
    report.details["long_soak"] = {
        "outcomes": dict(outcomes),
        "errors": [list(k) + [n] for k, n in errors.items()],
        "private_kib_per_model": per_model,
        "shm_kib": {k: v["shm_kb"] for k, v in memory.items()},
    }
