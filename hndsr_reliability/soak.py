"""Soak and determinism: a random mix of every request kind, server memory before and after."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections import Counter

import numpy as np
import tritonclient.grpc as grpcclient

from hndsr_client.arrays import request_arrays
from hndsr_client.interface import INPUTS
from hndsr_client.triton_client import (
    HNDSRClient,
    HNDSRError,
    InvalidInputError,
)
from hndsr_reliability.profile import Profile, Report
from hndsr_reliability.served import Served, outcome_of, synthetic_image

PROBES = [
    (synthetic_image(40, 56, 1), 2.0, 2, 7),
    (synthetic_image(48, 48, 2), 3.0, 1, 11),
    (synthetic_image(32, 64, 3), 4.0, 0, 0),
]
BAD = [
    ({"scale": 12.0}, "SCALE must be in"),
    ({"steps": 999}, "STEPS must be in"),
    ({"eta": 3.0}, "ETA must be in"),
    ({"image": np.zeros((5, 40, 3), np.uint8)}, "IMAGE sides must be"),
    ({"image": np.zeros((1100, 1100, 3), np.uint8), "scale": 4.0}, "output pixels"),
]


def _warmup_plan() -> list[dict]:
    """Every kind of soak request at its largest size, on every protocol: buffers and caches
    reach their high-water mark here, so growth measured afterwards is growth, not warm-up."""
    # The largest canvas of the soak (the deadline job's, 9 tiles) back to back on every soak
    # client: the largest concurrent stage batches, where onnxruntime's arenas reach their peak.
    big = {"kind": "valid", "shape": (128, 128), "scale": 4.0, "steps": 2, "seed": 2, "via": "grpc"}
    plan: list[dict] = [big] * 4
    for via in ("grpc", "http"):
        for shape, scale, steps in (((96, 96), 4.0, 4), ((16, 16), 2.0, 0), ((96, 17), 2.5, 1)):
            plan.append({"kind": "valid", "shape": shape, "scale": scale, "steps": steps, "seed": 3, "via": via})
    plan.append({"kind": "stream", "shape": (96, 96), "scale": 4.0, "steps": 4, "seed": 4, "via": "grpc"})
    plan += [{"kind": "cancel", "after": a, "seed": 5} for a in (0.2, 0.4, 0.6, 0.8)]
    plan += [{"kind": "deadline", "seed": 6} for _ in range(2)]
    plan += [{"kind": "invalid", "case": i, "via": ("grpc", "http")[i % 2]} for i in range(len(BAD))]
    plan += [{"kind": "probe", "probe": k, "via": v} for k in range(len(PROBES)) for v in ("grpc", "http", "stream")]
    return plan


def _soak_plan(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    plan = []
    for i in range(n):
        if i % 8 == 0:
            k = (i // 8) % len(PROBES)
            plan.append({"kind": "probe", "probe": k, "via": ("grpc", "http", "stream")[(i // 24) % 3]})
            continue
        r = rng.random()
        if r < 0.10:
            plan.append({"kind": "invalid", "case": rng.randrange(len(BAD)), "via": rng.choice(["grpc", "http"])})
        elif r < 0.17:
            plan.append({"kind": "cancel", "after": rng.uniform(0.2, 0.8), "seed": rng.randrange(1 << 30)})
        elif r < 0.22:
            plan.append({"kind": "deadline", "seed": rng.randrange(1 << 30)})
        else:
            h, w = rng.randrange(16, 97), rng.randrange(16, 97)
            plan.append(
                {
                    "kind": "stream" if r > 0.92 else "valid",
                    "shape": (h, w),
                    "scale": rng.choice([2.0, 2.5, 3.0, 4.0]),
                    "steps": rng.choice([0, 1, 2, 4]),
                    "seed": rng.randrange(1 << 30),
                    "via": rng.choice(["grpc", "http"]),
                }
            )
    return plan


class SoakWorker:
    def __init__(self, served: Served, profile: Profile) -> None:
        self.served, self.profile = served, profile
        self.grpc = HNDSRClient(served.grpc_url, "grpc", timeout_s=300)
        self.http = HNDSRClient(served.http_url, "http", timeout_s=300)
        self.raw = grpcclient.InferenceServerClient(served.grpc_url)
        self.hurried = HNDSRClient(served.grpc_url, "grpc", timeout_s=60, deadline_s=0.5)

    def close(self) -> None:
        for c in (self.grpc, self.http, self.raw, self.hurried):
            c.close()

    def do(self, spec: dict) -> tuple[str, str, str | None]:
        """(kind, outcome, digest of the probe output or error text)."""
        kind = spec["kind"]
        try:
            if kind == "probe":
                image, scale, steps, seed = PROBES[spec["probe"]]
                if spec["via"] == "stream":
                    out = self.grpc.upscale_streaming(image, scale=scale, steps=steps, seed=seed).image
                else:
                    client = self.grpc if spec["via"] == "grpc" else self.http
                    out = client.upscale(image, scale=scale, steps=steps, seed=seed).image
                return kind, "ok", hashlib.sha256(out.tobytes()).hexdigest()
            if kind == "invalid":
                args, expected = BAD[spec["case"]]
                args = {"image": synthetic_image(24, 24, 0), **args}
                client = self.grpc if spec["via"] == "grpc" else self.http
                try:
                    client.upscale(**args)
                except InvalidInputError as exc:
                    return kind, "invalid" if expected in str(exc) else "error", str(exc)[:120]
                return kind, "ok", None
            if kind == "cancel":
                return self._cancel(spec)
            if kind == "deadline":
                self.hurried.upscale(
                    synthetic_image(128, 128, spec["seed"] % 97), scale=4.0, steps=8, seed=spec["seed"]
                )
                return kind, "ok", None
            image = synthetic_image(*spec["shape"], spec["seed"] % 1000)
            if kind == "stream":
                out = self.grpc.upscale_streaming(image, scale=spec["scale"], steps=spec["steps"], seed=spec["seed"])
            else:
                client = self.grpc if spec["via"] == "grpc" else self.http
                out = client.upscale(image, scale=spec["scale"], steps=spec["steps"], seed=spec["seed"])
            expected_shape = (round(spec["scale"] * spec["shape"][0]), round(spec["scale"] * spec["shape"][1]), 3)
            return kind, "ok" if out.image.shape == expected_shape else "error", None
        except HNDSRError as exc:
            return kind, outcome_of(exc), str(exc)[:160]

    def _cancel(self, spec: dict) -> tuple[str, str, str | None]:
        image = synthetic_image(96, 96, spec["seed"] % 97)
        inputs = []
        arrays = request_arrays(image, scale=4.0, steps=8, seed=spec["seed"], eta=0.0)
        for spec_t in INPUTS:
            t = grpcclient.InferInput(spec_t.name, list(arrays[spec_t.name].shape), spec_t.datatype)
            t.set_data_from_numpy(arrays[spec_t.name])
            inputs.append(t)
        done = threading.Event()
        box: dict = {}

        def callback(result, error):
            box["error"] = error
            done.set()

        call = self.raw.async_infer("hndsr", inputs, callback=callback, client_timeout=120)
        time.sleep(spec["after"])
        call.cancel()
        done.wait(30)
        # Let the server notice (between DDIM steps) before this worker sends more: bounded wait.
        deadline = time.monotonic() + 10
        while self.served.admission()["inflight"] >= self.profile.max_inflight - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if not done.is_set():
            return "cancel", "hung", None
        error = box.get("error")
        if error is None:
            return "cancel", "ok", None  # finished before the cancel
        return "cancel", "cancelled" if "CANCELLED" in str(error.status()) else "error", str(error)[:160]


EXPECTED = {
    "probe": {"ok"},
    "valid": {"ok"},
    "stream": {"ok"},
    "invalid": {"invalid"},
    "cancel": {"cancelled", "ok"},
    "deadline": {"timeout", "ok"},
}


def soak(served: Served, profile: Profile, report: Report, seed: int = 0, kinds: set[str] | None = None) -> None:
    warmup = _warmup_plan() * profile.soak_warmup_repeats + _soak_plan(profile.soak_warmup, seed + 1)
    plan = [s for s in _soak_plan(profile.soak_requests, seed) if kinds is None or s["kind"] in kinds]
    results: list[tuple[str, str, str | None]] = []
    done_specs: list[dict] = []
    lock = threading.Lock()

    def run(specs: list[dict]) -> None:
        queue = list(specs)

        def loop() -> None:
            # Clients are made in the thread that uses them (the HTTP client is gevent-based).
            worker = SoakWorker(served, profile)
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        spec = queue.pop(0)
                    try:
                        result = worker.do(spec)
                    except Exception as exc:  # noqa: BLE001 - a bug in the suite or the client is unexpected
                        result = (spec["kind"], "exception", repr(exc)[:160])
                    with lock:
                        results.append(result)
                        done_specs.append(spec)
            finally:
                worker.close()

        threads = [threading.Thread(target=loop) for _ in range(profile.soak_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=1800)

    t0 = time.monotonic()
    run(warmup)
    served.wait_idle()
    time.sleep(1.0)
    mem0 = served.memory()
    shm_all0 = len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0
    warm_unexpected = [(k, o, m) for k, o, m in results if o not in EXPECTED[k]]
    results.clear()
    done_specs.clear()
    trace = [mem0["total_kb"]]
    for i in range(0, len(plan), 50):
        run(plan[i : i + 50])
        trace.append(served.memory()["total_kb"])
    served.wait_idle()
    time.sleep(1.0)
    mem1 = served.memory()
    shm_all1 = len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0
    elapsed = time.monotonic() - t0

    kinds = Counter(k for k, _, _ in results)
    unexpected = warm_unexpected + [(k, o, m) for k, o, m in results if o not in EXPECTED[k]]
    outcomes = Counter(o for _, o, _ in results)
    report.add(
        "soak",
        "requests",
        f"{len(results)} after {len(warmup)} warm-up, in {elapsed:.0f}s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
        f">= {profile.soak_requests}",
        len(results) >= profile.soak_requests,
    )
    report.add("soak", "outcomes", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    report.add("soak", "unexpected errors", len(unexpected), "0", not unexpected)

    def mib(kb: float) -> str:
        return f"{kb / 1024:.0f}"

    def growth(a: float, b: float) -> float:
        return (b - a) / a * 100 if a else float("nan")

    nproc = len(mem1["anon"])
    total = growth(mem0["total_kb"], mem1["total_kb"])
    report.add(
        "soak",
        f"server memory after warm-up -> end: private memory of tritonserver + {nproc - 1} stubs, plus shm pools",
        f"{mib(mem0['total_kb'])} -> {mib(mem1['total_kb'])} MiB ({total:+.1f}%)",
        "< 5%",
        total < 5,
    )
    report.add(
        "soak",
        "of which Python-backend shm pools (grow to the largest tensors seen, never shrink)",
        f"{mib(mem0['shm_kb'])} -> {mib(mem1['shm_kb'])} MiB",
    )
    rss0, rss1 = sum(mem0["rss"].values()), sum(mem1["rss"].values())
    report.add(
        "soak",
        "plain RSS sum (shm pools counted in every process mapping them)",
        f"{mib(rss0)} -> {mib(rss1)} MiB ({growth(rss0, rss1):+.1f}%); tritonserver "
        f"{mib(mem0['rss'].get('tritonserver', 0))} -> {mib(mem1['rss'].get('tritonserver', 0))} MiB",
    )
    common = set(mem0["anon"]) & set(mem1["anon"])
    if common:
        worst = max(common, key=lambda n: mem1["anon"][n] - mem0["anon"][n])
        a, b = mem0["anon"][worst], mem1["anon"][worst]
        report.add("soak", "largest private-memory growth of one process", f"{worst}: {mib(a)} -> {mib(b)} MiB")
    shm0, shm1 = mem0["regions"], mem1["regions"]
    report.add(
        "soak",
        "/dev/shm regions mapped by the server (all in /dev/shm)",
        f"{len(shm0)} -> {len(shm1)} ({shm_all0} -> {shm_all1})",
        "unchanged",
        shm0 == shm1,
    )
    digests: dict[int, set[str]] = {}
    for spec, (kind, outcome, digest) in zip(done_specs, results):
        if kind == "probe":
            digests.setdefault(spec["probe"], set()).add(digest if outcome == "ok" else f"failed: {outcome}")
    probes = sum(1 for s in done_specs if s["kind"] == "probe")
    vias = sorted({s["via"] for s in done_specs if s["kind"] == "probe"})
    report.add(
        "determinism",
        f"same seed -> identical bytes ({len(PROBES)} probes repeated over {', '.join(vias)} across the soak)",
        f"{probes} probe results, distinct outputs per probe: {[len(d) for _, d in sorted(digests.items())]}",
        "1 per probe",
        bool(digests) and all(len(d) == 1 and not next(iter(d)).startswith("failed") for d in digests.values()),
    )
    report.details["soak"] = {
        "server_memory_mib_every_50": [round(t / 1024) for t in trace],
        "before": {k: v for k, v in mem0.items() if k != "regions"},
        "after": {k: v for k, v in mem1.items() if k != "regions"},
        "shm_before": sorted(shm0),
        "shm_after": sorted(shm1),
        "unexpected": unexpected[:20],
    }
