"""Overload, deadline, crashes of stages, the core and a front, and the draining SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter

from hndsr_client.triton_client import (
    RETRY_BACKOFF_S,
    HNDSRClient,
    HNDSRError,
)
from hndsr_reliability.profile import Profile, Report, ms, percentile
from hndsr_reliability.served import LightLoad, ReadyPoller, Served, outcome_of, synthetic_image


def _burst(served: Served, n: int, job: tuple[int, float, int], seed: int, deadline_s: float):
    """``n`` connected clients send one request each at the same moment: (outcome, seconds) each, hung."""
    side, scale, steps = job
    image = synthetic_image(side, side, 5)
    clients = [HNDSRClient(served.grpc_url, "grpc", timeout_s=deadline_s + 30, deadline_s=deadline_s) for _ in range(n)]
    for c in clients:
        c.health()  # connected before the burst: the latency below is the request's own
    barrier = threading.Barrier(n)
    results: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one(client: HNDSRClient, i: int) -> None:
        barrier.wait(timeout=60)
        t0 = time.perf_counter()
        try:
            client.upscale(image, scale=scale, steps=steps, seed=seed + i)
            outcome = "ok"
        except HNDSRError as exc:
            outcome = outcome_of(exc)
        with lock:
            results.append((outcome, time.perf_counter() - t0))

    threads = [threading.Thread(target=one, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=deadline_s + 60)
    hung = sum(t.is_alive() for t in threads) + sum(1 for _, s in results if s > deadline_s + 5)
    for c in clients:
        c.close()
    return results, hung


def overload(served: Served, profile: Profile, report: Report) -> None:
    n = profile.overload_factor * profile.max_inflight
    side, scale, steps = profile.overload_job
    lat: dict[str, list[float]] = {}
    hung = 0
    for round_ in range(profile.overload_rounds):
        served.wait_idle()
        results, stuck = _burst(served, n, profile.overload_job, round_ * 100, deadline_s=300.0)
        hung += stuck
        for outcome, seconds in results:
            lat.setdefault(outcome, []).append(seconds)
    ok, rej = lat.get("ok", []), lat.get("overloaded", [])
    lost = sum(len(v) for k, v in lat.items() if k not in ("ok", "overloaded"))
    total = n * profile.overload_rounds
    slack = profile.timing_slack
    report.add(
        "overload",
        f"clients ({profile.overload_factor}x capacity {profile.max_inflight}), {side}px x{scale:g} {steps} steps",
        f"{n} x {profile.overload_rounds} rounds",
    )
    report.add(
        "overload",
        "admitted: count, latency p50 / p99",
        f"{len(ok)}, {percentile(ok, 50):.1f} s / {percentile(ok, 99):.1f} s",
        f"{profile.max_inflight} per round",
        len(ok) >= profile.max_inflight * profile.overload_rounds,
    )
    report.add(
        "overload",
        "rejected: count, latency at the client p50 / p99 / max",
        f"{len(rej)}, {ms(percentile(rej, 50))} / {ms(percentile(rej, 99))} / {ms(max(rej, default=0))}",
        f"p99 < {ms(0.1 * slack)}",
        bool(rej) and percentile(rej, 99) < 0.1 * slack,
    )
    report.add("overload", "hung / lost", f"{hung} / {lost} of {total}", "0 / 0", hung == 0 and lost == 0)
    alive = served.ready() == 200
    try:
        with HNDSRClient(served.grpc_url) as c:
            c.upscale(synthetic_image(32, 32, 0), scale=2.0, steps=0)
    except HNDSRError:
        alive = False
    report.add("overload", "server ready and serving after", alive, "yes", alive)
    report.details["overload"] = {k: sorted(v) for k, v in lat.items()}


def deadline(served: Served, profile: Profile, report: Report) -> None:
    """max_inflight requests, each longer than its deadline: every one ends by its deadline."""
    served.wait_idle()
    side, scale, steps = profile.deadline_job
    limit = profile.deadline_s
    results: list[tuple[str, float]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with HNDSRClient(served.grpc_url, timeout_s=120, deadline_s=limit) as c:
            t0 = time.perf_counter()
            try:
                c.upscale(synthetic_image(side, side, i), scale=scale, steps=steps, seed=i)
                outcome = "ok"
            except HNDSRError as exc:
                outcome = outcome_of(exc)
            with lock:
                results.append((outcome, time.perf_counter() - t0))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(profile.max_inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    worst = max((s for _, s in results), default=float("inf"))
    # A request ends at the first check after its deadline: between DDIM steps or queue polls.
    bound = limit + 1.5 * profile.timing_slack
    outcomes = Counter(o for o, _ in results)
    report.add(
        "deadline",
        f"{profile.max_inflight} requests ({side}px x{scale:g}, {steps} steps) with a {limit:g} s deadline",
        ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + f"; slowest answer {worst:.2f} s",
        f"all answered by {bound:.1f} s",
        len(results) == profile.max_inflight and worst <= bound and set(outcomes) <= {"timeout", "ok"},
    )


# -- crash -----------------------------------------------------------------------------------------


def crash(served: Served, profile: Profile, report: Report) -> None:
    cases = [(m, signal.SIGKILL) for m in profile.crash_models] + [(m, signal.SIGSTOP) for m in profile.stop_models]
    slack = profile.timing_slack
    for model, sig in cases:
        served.wait_idle()
        load = LightLoad(served)
        t_wait = time.monotonic() + 120
        while not load.ok_after(0) and time.monotonic() < t_wait:
            time.sleep(0.1)
        poller = ReadyPoller(served, 0.1, limit_s=200)
        # One stub: the only one of a stage, the first of a multi-instance model (hndsr has 6).
        victims = sorted((s for s in served.stubs().values() if s.model == model), key=lambda s: s.instance)[:1]
        time.sleep(0.3)
        t_kill = time.monotonic()
        for v in victims:
            os.kill(v.pid, sig)
        t_end = t_kill + 150
        t_down = t_up = None
        while time.monotonic() < t_end:
            t_down = t_down or poller.first(t_kill, lambda s: s != 200)
            t_up = t_down and poller.first(t_down, lambda s: s == 200)
            if t_up and load.ok_after(t_up):
                break
            time.sleep(0.2)
        poller.stop()
        load.stop()
        for v in victims:  # never leave a frozen process behind
            if sig == signal.SIGSTOP and v.pid in {s.pid for s in served.stubs().values()}:
                os.kill(v.pid, signal.SIGKILL)
        after = [e for e in load.events if e[0] >= t_kill]
        failed = [e for e in after if e[1] != "ok"]
        served_ok = sum(1 for e in after if e[1] == "ok")
        name = f"{model} ({'kill -9' if sig == signal.SIGKILL else 'SIGSTOP'})"
        down = (t_down - t_kill) if t_down else float("inf")
        up = (t_up - t_kill) if t_up else float("inf")
        report.add(
            "crash",
            f"{name}: not-ready after / ready again after",
            f"{down:.1f} s / {up:.1f} s",
            f"< {5 * slack:g} s / < {60 * slack:g} s",
            down < 5 * slack and up < 60 * slack,
        )
        report.add(
            "crash",
            f"{name}: requests failed / served during and after (light load)",
            f"{len(failed)} / {served_ok}" + (f" ({failed[0][2][:80]})" if failed else ""),
        )
        report.details.setdefault("crash", {})[name] = {"down_s": down, "up_s": up, "failed": failed[:5]}


def front_crash(served: Served, profile: Profile, report: Report, clients: int = 4) -> None:
    """kill -9 of one ``hndsr`` front stub under ``clients`` steady clients, without and with the
    client library's retries of requests a crashed or reloading front lost: failures seen by clients."""
    for retries in (0, None):
        served.wait_idle()
        loads = [LightLoad(served, retries) for _ in range(clients)]
        t_wait = time.monotonic() + 120
        while not all(load.ok_after(0) for load in loads) and time.monotonic() < t_wait:
            time.sleep(0.1)
        (victim,) = sorted((s for s in served.stubs().values() if s.model == "hndsr"), key=lambda s: s.instance)[:1]
        t_kill = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        t_end = t_kill + 150 * profile.timing_slack
        while not all(load.ok_after(t_kill + 5) for load in loads) and time.monotonic() < t_end:
            time.sleep(0.2)
        for load in loads:
            load.stop()
        after = [e for load in loads for e in load.events if e[0] >= t_kill]
        failed = [e for e in after if e[1] != "ok"]
        label = "no retries" if retries == 0 else f"client retries ({len(RETRY_BACKOFF_S)}, default)"
        report.add(
            "front crash",
            f"hndsr front kill -9, {clients} clients, {label}: requests failed / served",
            f"{len(failed)} / {len(after) - len(failed)}" + (f" ({failed[0][2][:80]})" if failed else ""),
            "0 failed" if retries is None else "",
            (not failed) if retries is None else None,
        )
        report.details.setdefault("front_crash", {})[label] = {"failed": failed[:5], "served": len(after)}


def drain(served: Served, profile: Profile, report: Report) -> None:
    served.wait_idle()
    k = profile.max_inflight
    side, scale, steps = profile.drain_job
    results: list[str] = []
    late: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with HNDSRClient(served.grpc_url, timeout_s=profile.drain_grace_s + 120) as c:
            try:
                c.upscale(synthetic_image(side, side, 20 + i), scale=scale, steps=steps, seed=i)
                outcome = "ok"
            except HNDSRError as exc:
                outcome = outcome_of(exc) + ": " + str(exc)[:80]
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    t_wait = time.monotonic() + 60
    while served.admission()["inflight"] < k and time.monotonic() < t_wait:
        time.sleep(0.02)
    before = served.admission()
    regions = served.shm_regions()  # tritonserver maps every pool, also those of stubs that died
    poller = ReadyPoller(served, 0.05, limit_s=profile.drain_grace_s + 60)
    t_term = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)

    def late_client() -> None:
        t_end = time.monotonic() + profile.drain_grace_s + 60
        while served.proc.poll() is None and time.monotonic() < t_end:
            with HNDSRClient(served.grpc_url, timeout_s=30) as c:
                try:
                    c.upscale(synthetic_image(24, 24, 0), scale=2.0, steps=0)
                    late.append("ok")
                except HNDSRError as exc:
                    late.append(outcome_of(exc))
            time.sleep(0.2)

    lt = threading.Thread(target=late_client)
    time.sleep(0.3)
    lt.start()
    for t in threads:
        t.join(timeout=profile.drain_grace_s + 150)
    try:
        code = served.proc.wait(timeout=profile.drain_grace_s + 60)
    except subprocess.TimeoutExpired:
        code = None
    t_exit = time.monotonic() - t_term
    lt.join(timeout=60)
    poller.stop()
    after = served.admission()
    t_down = poller.first(t_term, lambda s: s != 200)
    completed = results.count("ok")
    admitted_after = after["admitted_total"] - before["admitted_total"]
    report.add(
        "drain",
        f"in flight at SIGTERM ({before['running']} running, {before['queued']} queued): completed / lost",
        f"{completed} / {k - completed}",
        f"{k} / 0",
        completed == k,
    )
    report.add(
        "drain",
        "requests sent after SIGTERM: refused / started",
        f"{len(late) - late.count('ok')} / {late.count('ok') + admitted_after}",
        "all / 0",
        late.count("ok") == 0 and admitted_after == 0,
    )
    report.add(
        "drain",
        "not-ready after SIGTERM / launcher exit after SIGTERM (code)",
        f"{(t_down - t_term) if t_down else float('inf'):.2f} s / {t_exit:.1f} s ({code})",
        f"< {1 * profile.timing_slack:g} s / < grace {profile.drain_grace_s:g} s + 15 s",
        t_down is not None and t_down - t_term < profile.timing_slack and code == 0,
    )
    left = sorted(r for r in regions if os.path.exists(r))
    report.add("drain", "server's /dev/shm pools left after exit", f"{len(left)} of {len(regions)}", "0", not left)
    report.details["drain"] = {"results": results, "late": late, "shm_left": left}
