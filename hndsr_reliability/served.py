"""The server under test: ``hndsr serve`` on free ports, its stubs, a readiness poller and a light load."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hndsr.serving.admission import Admission
from hndsr.serving.server import Stub, free_port, stub_processes
from hndsr_client.triton_client import (
    HNDSRClient,
    HNDSRError,
    InvalidInputError,
    OverloadedError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from hndsr_reliability.profile import Profile


def synthetic_image(side_h: int, side_w: int, seed: int) -> np.ndarray:
    """A smooth, deterministic test image (gradients plus a few blobs), uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side_h, 0:side_w].astype(np.float32)
    img = np.stack([x / max(side_w - 1, 1), y / max(side_h - 1, 1), (x + y) / max(side_h + side_w - 2, 1)], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, side_h), rng.uniform(0, side_w), rng.uniform(3, 12)
        img += rng.uniform(-0.5, 0.5, 3) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


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


def outcome_of(exc: BaseException | None) -> str:
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
        image = synthetic_image(48, 48, 9)
        t_end = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < t_end:
            more = {} if self.retries is None else {"retries": self.retries}
            with HNDSRClient(self.served.grpc_url, timeout_s=150, deadline_s=120, **more) as c:
                try:
                    c.upscale(image, scale=2.0, steps=2, seed=1)
                    self.events.append((time.monotonic(), "ok", ""))
                except HNDSRError as exc:
                    self.events.append((time.monotonic(), outcome_of(exc), str(exc)[:160]))
                    self._stop.wait(0.2)

    def ok_after(self, t: float) -> bool:
        return any(ts > t and o == "ok" for ts, o, _ in list(self.events))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=200)
