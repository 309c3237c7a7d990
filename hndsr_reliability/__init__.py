"""``hndsr-reliability``: overload, deadline, crash, drain, soak and determinism against a real ``hndsr serve``.

Starts ``hndsr serve`` on free loopback ports (its own work directory), drives it with the client
library and raw Triton clients, and prints one table of measured numbers against the targets of
the reliability issue. Every loop is bounded in count and time. ``--quick`` is the CI version
(``tests/test_reliability.py``): fewer requests, one crash per stage, and timing targets relaxed
five-fold because CI shares two busy cores; the full run applies the targets as written.

Scenarios, in order (the drain ends the server, so it comes last):
soak + determinism -> overload -> deadline -> crash (kill -9 of each stage stub, SIGSTOP of one)
-> drain (SIGTERM with requests in flight).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import typer

from hndsr.serving.admission import Admission
from hndsr.serving.server import Stub, free_port, stub_processes
from hndsr_client.arrays import request_arrays
from hndsr_client.interface import DEFAULT_STEPS, INPUTS
from hndsr_client.triton_client import (
    RETRY_BACKOFF_S,
    HNDSRClient,
    HNDSRError,
    InvalidInputError,
    OverloadedError,
    RequestTimeoutError,
    ServerUnavailableError,
)

STAGES = ("encoder", "prior", "unet", "decoder")


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
    soak_requests=36,
    soak_warmup=10,
    crash_models=(*STAGES, "hndsr_core"),
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


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _image(side_h: int, side_w: int, seed: int) -> np.ndarray:
    """A smooth, deterministic test image (gradients plus a few blobs), uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side_h, 0:side_w].astype(np.float32)
    img = np.stack([x / max(side_w - 1, 1), y / max(side_h - 1, 1), (x + y) / max(side_h + side_w - 2, 1)], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, side_h), rng.uniform(0, side_w), rng.uniform(3, 12)
        img += rng.uniform(-0.5, 0.5, 3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


# -- the server under test -------------------------------------------------------------------------


class Served:
    """``hndsr serve`` as a subprocess on free ports, with its log and its admission state file."""

    def __init__(self, work: Path, profile: Profile) -> None:
        self.work = work
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.log_path = work / "serve.log"
        cli = Path(sys.executable).parent / "hndsr"
        cmd = [
            str(cli),
            "serve",
            "--http-port",
            str(self.http),
            "--grpc-port",
            str(self.grpc),
            "--metrics-port",
            str(self.metrics),
            "--max-inflight",
            str(profile.max_inflight),
            "--max-running",
            str(profile.max_running),
            "--drain-grace",
            str(profile.drain_grace_s),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "HNDSR_WORK_DIR": str(work)}
        )
        self.admission_file = work / "run" / f"admission-{self.http}.json"
        self.grpc_url = f"127.0.0.1:{self.grpc}"
        self.http_url = f"127.0.0.1:{self.http}"

    def wait_ready(self, timeout: float = 400.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hndsr serve exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            if "is ready" in self.log():
                return time.monotonic() - t0
            time.sleep(0.5)
        raise TimeoutError(f"hndsr serve not ready after {timeout:.0f}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> int:
        """HTTP status of /v2/health/ready (0: no answer)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def triton_pid(self) -> int | None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                if ppid != self.proc.pid:
                    continue
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0].endswith(b"tritonserver"):
                        return int(entry.name)
            except (OSError, IndexError, ValueError):
                continue
        return None

    def stubs(self) -> dict[str, Stub]:
        pid = self.triton_pid()
        return stub_processes(pid) if pid else {}

    def admission(self) -> dict:
        adm = Admission(self.admission_file, 1, 1)
        try:
            return adm.snapshot()
        finally:
            adm.close()

    def wait_idle(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.admission()["inflight"] and time.monotonic() < deadline:
            time.sleep(0.1)

    def rss_kb(self, field: str = "VmRSS") -> dict[str, int]:
        """Resident memory (``field`` of /proc/PID/status) of tritonserver and every stub, by name."""
        out = {}
        pid = self.triton_pid()
        procs = {"tritonserver": pid} if pid else {}
        procs.update({name: s.pid for name, s in self.stubs().items()})
        for name, p in procs.items():
            try:
                with open(f"/proc/{p}/status") as f:
                    out[name] = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
            except (OSError, StopIteration):
                pass
        return out

    def memory(self) -> dict:
        """RSS per process, private (anonymous) memory per process, and the Python backend's shared
        memory pools counted once (each is mapped by its stub and by tritonserver, so RSS counts it twice)."""
        regions = self.shm_regions()
        shm_kb = 0
        for path in regions:
            with contextlib.suppress(OSError):
                shm_kb += os.stat(path).st_blocks * 512 // 1024
        anon = self.rss_kb("RssAnon")
        return {
            "rss": self.rss_kb(),
            "anon": anon,
            "models": {name: stub.model for name, stub in self.stubs().items()},
            "shm_kb": shm_kb,
            "regions": regions,
            "total_kb": sum(anon.values()) + shm_kb,
        }

    def shm_regions(self) -> set[str]:
        """/dev/shm files mapped by tritonserver or its stubs."""
        pids = [self.triton_pid(), *(s.pid for s in self.stubs().values())]
        regions = set()
        for p in filter(None, pids):
            try:
                with open(f"/proc/{p}/maps") as f:
                    regions.update(line.split()[-1] for line in f if "/dev/shm/" in line)
            except OSError:
                pass
        return regions

    def stop(self, timeout: float = 120.0) -> int:
        triton = self.triton_pid()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)  # a second signal cuts the grace period short
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if triton is not None:  # never leave tritonserver or its stubs behind (own process group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(triton, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


class ReadyPoller:
    """Polls /v2/health/ready every ``interval`` seconds in a thread (bounded by ``limit_s``)."""

    def __init__(self, served: Served, interval: float = 0.1, limit_s: float = 300.0) -> None:
        self.served, self.interval, self.limit_s = served, interval, limit_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < self.limit_s:
            self.samples.append((time.monotonic(), self.served.ready()))
            self._stop.wait(self.interval)

    def first(self, after: float, predicate: Callable[[int], bool]) -> float | None:
        return next((t for t, s in list(self.samples) if t >= after and predicate(s)), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    for cls, name in (
        (InvalidInputError, "invalid"),
        (OverloadedError, "overloaded"),
        (RequestTimeoutError, "timeout"),
        (ServerUnavailableError, "unavailable"),
    ):
        if isinstance(exc, cls):
            return name
    return "error"


# -- soak + determinism ----------------------------------------------------------------------------

PROBES = [
    (_image(40, 56, 1), 2.0, 2, 7),
    (_image(48, 48, 2), 3.0, 1, 11),
    (_image(32, 64, 3), 4.0, 0, 0),
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
                args = {"image": _image(24, 24, 0), **args}
                client = self.grpc if spec["via"] == "grpc" else self.http
                try:
                    client.upscale(**args)
                except InvalidInputError as exc:
                    return kind, "invalid" if expected in str(exc) else "error", str(exc)[:120]
                return kind, "ok", None
            if kind == "cancel":
                return self._cancel(spec)
            if kind == "deadline":
                self.hurried.upscale(_image(128, 128, spec["seed"] % 97), scale=4.0, steps=8, seed=spec["seed"])
                return kind, "ok", None
            image = _image(*spec["shape"], spec["seed"] % 1000)
            if kind == "stream":
                out = self.grpc.upscale_streaming(image, scale=spec["scale"], steps=spec["steps"], seed=spec["seed"])
            else:
                client = self.grpc if spec["via"] == "grpc" else self.http
                out = client.upscale(image, scale=spec["scale"], steps=spec["steps"], seed=spec["seed"])
            expected_shape = (round(spec["scale"] * spec["shape"][0]), round(spec["scale"] * spec["shape"][1]), 3)
            return kind, "ok" if out.image.shape == expected_shape else "error", None
        except HNDSRError as exc:
            return kind, _outcome(exc), str(exc)[:160]

    def _cancel(self, spec: dict) -> tuple[str, str, str | None]:
        image = _image(96, 96, spec["seed"] % 97)
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


# -- long soak -------------------------------------------------------------------------------------


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


# -- overload and deadline -------------------------------------------------------------------------


def _burst(served: Served, n: int, job: tuple[int, float, int], seed: int, deadline_s: float):
    """``n`` connected clients send one request each at the same moment: (outcome, seconds) each, hung."""
    side, scale, steps = job
    image = _image(side, side, 5)
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
            outcome = _outcome(exc)
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
        f"{len(ok)}, {_pct(ok, 50):.1f} s / {_pct(ok, 99):.1f} s",
        f"{profile.max_inflight} per round",
        len(ok) >= profile.max_inflight * profile.overload_rounds,
    )
    report.add(
        "overload",
        "rejected: count, latency at the client p50 / p99 / max",
        f"{len(rej)}, {_ms(_pct(rej, 50))} / {_ms(_pct(rej, 99))} / {_ms(max(rej, default=0))}",
        f"p99 < {_ms(0.1 * slack)}",
        bool(rej) and _pct(rej, 99) < 0.1 * slack,
    )
    report.add("overload", "hung / lost", f"{hung} / {lost} of {total}", "0 / 0", hung == 0 and lost == 0)
    alive = served.ready() == 200
    try:
        with HNDSRClient(served.grpc_url) as c:
            c.upscale(_image(32, 32, 0), scale=2.0, steps=0)
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
                c.upscale(_image(side, side, i), scale=scale, steps=steps, seed=i)
                outcome = "ok"
            except HNDSRError as exc:
                outcome = _outcome(exc)
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


class LightLoad:
    """One client sending small requests back to back (each with a deadline), recording outcomes."""

    def __init__(self, served: Served, retries: int | None = None) -> None:
        self.served = served
        self.retries = retries
        self.events: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        image = _image(48, 48, 9)
        t_end = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < t_end:
            more = {} if self.retries is None else {"retries": self.retries}
            with HNDSRClient(self.served.grpc_url, timeout_s=150, deadline_s=120, **more) as c:
                try:
                    c.upscale(image, scale=2.0, steps=2, seed=1)
                    self.events.append((time.monotonic(), "ok", ""))
                except HNDSRError as exc:
                    self.events.append((time.monotonic(), _outcome(exc), str(exc)[:160]))
                    self._stop.wait(0.2)

    def ok_after(self, t: float) -> bool:
        return any(ts > t and o == "ok" for ts, o, _ in list(self.events))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=200)


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


# -- drain -----------------------------------------------------------------------------------------


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
                c.upscale(_image(side, side, 20 + i), scale=scale, steps=steps, seed=i)
                outcome = "ok"
            except HNDSRError as exc:
                outcome = _outcome(exc) + ": " + str(exc)[:80]
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
                    c.upscale(_image(24, 24, 0), scale=2.0, steps=0)
                    late.append("ok")
                except HNDSRError as exc:
                    late.append(_outcome(exc))
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


# -- driver ----------------------------------------------------------------------------------------


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


app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


@app.command()
def reliability(
    quick: bool = typer.Option(False, "--quick", help="the CI version (relaxed timing targets)"),
    soak: int | None = typer.Option(None, help="soak requests after the warm-up (default 300, quick 36)"),
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


if __name__ == "__main__":
    main()
