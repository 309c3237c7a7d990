"""``hndsr serve``'s supervisor: honest health, self-healing and a draining shutdown around tritonserver.

Triton runs with explicit model control (every model loaded at start; the control API refused
without the launcher's random token, see ``ServerOptions.admin_token``). A watchdog loop, every
``probe_interval_s``:

- looks at the Python-backend stub processes (children of tritonserver). A stub that is gone, a
  zombie, stopped for more than ``stop_grace_s``, or whose model has requests pending and has not
  finished one for ``stall_timeout_s`` (Triton's own metrics) marks its model broken;
- heals a broken model through the model-control API: unload (Triton's readiness turns false at
  once: ``/v2/health/ready`` and ``/v2/models/<m>/ready`` answer 400), load (a fresh stub), ready
  again. Requests in flight retry their stage (``hndsr.serving.bls``) or ``hndsr_core`` calls
  (``hndsr.serving.orchestrator``) meanwhile;
- restarts tritonserver when it exited, when a heal fails, or when it stays not ready for
  ``heal_timeout_s``; after ``max_restarts`` restarts within ten minutes it gives up and exits
  with status 1, so that a container runtime or Kubernetes restarts the whole service.

On SIGTERM/SIGINT it drains: new requests are refused at once (the admission state says
"draining", and the front models ``hndsr``/``hndsr_stream`` are unloaded, so readiness is false),
requests in flight finish for up to ``drain_grace_s``, and only then tritonserver gets its SIGTERM
(once Triton's own shutdown begins it refuses the models' BLS calls). A second signal cuts the
grace period short. Shared-memory pools that Triton leaves behind are removed once it exited.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hndsr.serving.admission import Admission
from hndsr.serving.server import (
    ADMIN_HEADER,
    ServerOptions,
    remove_stale_regions,
    shm_limits,
    shm_size,
    start_server,
    stop_server,
    stub_maps_region,
    stub_processes,
    wait_ready,
)

ORCHESTRATORS = ("hndsr", "hndsr_stream")


@dataclass
class SupervisorOptions:
    drain_grace_s: float = 60.0
    """How long requests in flight at SIGTERM may take to finish before Triton is stopped."""
    probe_interval_s: float = 0.5
    stop_grace_s: float = 2.0
    """A stub stopped (SIGSTOP, state T) this long is killed and its model reloaded."""
    stall_timeout_s: float = 60.0
    """A model with pending requests that finishes none for this long is killed and reloaded."""
    heal_timeout_s: float = 120.0
    ready_timeout_s: float = 300.0
    max_restarts: int = 3


_METRIC = re.compile(r'^(nv_inference_pending_request_count|nv_inference_exec_count)\{model="([^"]+)"[^}]*\} (\S+)$')


def parse_progress(text: str) -> dict[str, tuple[float, float]]:
    """model -> (pending requests, executions so far) from Triton's Prometheus text."""
    out: dict[str, list[float]] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            slot = out.setdefault(m.group(2), [0.0, 0.0])
            slot[0 if m.group(1) == "nv_inference_pending_request_count" else 1] += float(m.group(3))
    return {k: (v[0], v[1]) for k, v in out.items()}


IDLE_STOP_S = 3.0
"""After a complete drain, how long tritonserver's own shutdown may take before it is killed: the
stage and core models unload in about 2 s; the twelve idle front instances would take 9 s more."""


class Supervisor:
    def __init__(
        self,
        opts: ServerOptions,
        sup: SupervisorOptions | None = None,
        log_file: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.opts = replace(opts, admin_token=opts.admin_token or secrets.token_hex(16))
        self.sup = sup or SupervisorOptions()
        self.log_file = log_file
        self._echo = echo or (lambda msg: print(msg, flush=True))
        self.proc: subprocess.Popen | None = None
        self.expected: dict[str, str] = {}
        """instance name -> model, from the last time every model was ready."""
        self.restarts: list[float] = []
        self.regions: dict[str, int] = {}
        """Shared-memory pool of every stub seen -> its pid (see ``_remove_stale_regions``)."""
        self._stopped_since: dict[str, float] = {}
        self._progress: dict[str, tuple[float, float, float]] = {}
        self._not_ready_since: float | None = None
        self._last_metrics = 0.0
        self.base = f"http://{self.opts.host}:{self.opts.http_port}"

    def log(self, message: str) -> None:
        self._echo(f"[hndsr serve {time.strftime('%H:%M:%S')}] {message}")

    # -- Triton's HTTP API -------------------------------------------------------------------------

    def _http(self, method: str, path: str, timeout: float = 5.0, admin: bool = False) -> tuple[int, bytes]:
        headers = {ADMIN_HEADER: self.opts.admin_token} if admin else {}
        data = b"{}" if method == "POST" else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError as exc:
            return 0, str(exc).encode()

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        return self._http("GET", path, timeout=2.0)[0] == 200

    def unload(self, model: str) -> bool:
        status, body = self._http("POST", f"/v2/repository/models/{model}/unload", admin=True)
        if status != 200:
            self.log(f"unload {model} failed: {status} {body[:200]!r}")
        return status == 200

    def load(self, model: str) -> bool:
        status, body = self._http(
            "POST", f"/v2/repository/models/{model}/load", timeout=self.sup.heal_timeout_s, admin=True
        )
        if status != 200:
            self.log(f"load {model} failed: {status} {body[:200]!r}")
        return status == 200

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def admission(self) -> Admission:
        if not hasattr(self, "_admission"):
            self._admission = Admission(self.opts.admission_path(), 1, 1)  # limits unused here
        return self._admission

    def start(self) -> None:
        t0 = time.monotonic()
        self.proc = start_server(self.opts, self.log_file)
        try:
            wait_ready(self.opts.host, self.opts.http_port, self.sup.ready_timeout_s, self.proc)
        except Exception:
            stop_server(self.proc)
            raise
        self._snapshot()
        self._not_ready_since = None
        self.log(
            f"tritonserver ready in {time.monotonic() - t0:.1f}s (pid {self.proc.pid}, "
            f"{len(self.expected)} stubs watched, admission state {self.opts.admission_path()})"
        )
        shm = shm_size()
        max_pixels, chunk = shm_limits(shm)
        if max_pixels is not None:
            self.log(
                f"small /dev/shm ({shm >> 20} MiB): requests limited to {max_pixels} output pixels, "
                f"{chunk} tiles per stage call (give the container more, e.g. --shm-size=2g, to lift it)"
            )

    def _snapshot(self, models: set[str] | None = None) -> None:
        stubs = stub_processes(self.proc.pid)
        self.regions.update({s.region: s.pid for s in stubs.values()})
        if models is None:
            self.expected = {s.instance: s.model for s in stubs.values()}
        else:
            self.expected = {i: m for i, m in self.expected.items() if m not in models}
            self.expected.update({s.instance: s.model for s in stubs.values() if s.model in models})

    def restart(self, reason: str) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 600] + [now]
        if len(self.restarts) > self.sup.max_restarts:
            self.log(f"{reason}; {self.sup.max_restarts} restarts in ten minutes already: giving up")
            return False
        self.log(f"{reason}: restarting tritonserver")
        if self.proc is not None:
            stop_server(self.proc, timeout=15)
            self._remove_stale_regions()
        try:
            self.start()
        except Exception as exc:  # noqa: BLE001 - reported, then the caller decides
            self.log(f"restart failed: {exc}")
            return False
        return True

    # -- watchdog ----------------------------------------------------------------------------------

    def broken_models(self) -> dict[str, str]:
        """model -> why, for every model whose stub died, stopped or stalled."""
        now = time.monotonic()
        stubs = stub_processes(self.proc.pid)
        broken: dict[str, str] = {}
        for instance, model in self.expected.items():
            stub = stubs.get(instance)
            if stub is None:
                broken.setdefault(model, f"stub {instance} died")
            elif stub.state in ("T", "t"):
                since = self._stopped_since.setdefault(instance, now)
                if now - since >= self.sup.stop_grace_s:
                    broken.setdefault(model, f"stub {instance} (pid {stub.pid}) stopped for {now - since:.0f}s")
            else:
                self._stopped_since.pop(instance, None)
        if now - self._last_metrics >= max(2.0, self.sup.probe_interval_s):
            self._last_metrics = now
            broken.update({m: why for m, why in self._stalled(now).items() if m not in broken})
        return broken

    def _stalled(self, now: float) -> dict[str, str]:
        try:
            url = f"http://{self.opts.host}:{self.opts.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as resp:
                progress = parse_progress(resp.read().decode())
        except OSError:
            return {}
        stalled = {}
        for model, (pending, executed) in progress.items():
            last = self._progress.get(model)
            if pending <= 0 or last is None or last[1] != executed:
                self._progress[model] = (pending, executed, now)
            elif now - last[2] >= self.sup.stall_timeout_s:
                stalled[model] = f"{pending:.0f} requests pending, none finished for {now - last[2]:.0f}s"
                self._progress.pop(model, None)
        return stalled

    def heal(self, model: str, why: str) -> bool:
        t0 = time.monotonic()
        self.log(f"{model}: {why}; reloading it")
        for stub in stub_processes(self.proc.pid).values():
            if stub.model == model:  # a stopped or stalled stub: make it a dead one
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGKILL)
        self.unload(model)
        ok = self.load(model) and self.ready(model)
        for instance in [i for i, m in self.expected.items() if m == model]:
            self._stopped_since.pop(instance, None)
        self._snapshot({model})
        removed = self._remove_dead_stub_regions()
        if ok:
            pools = f", {removed} dead stub pools removed" if removed else ""
            self.log(f"{model}: healed in {time.monotonic() - t0:.1f}s{pools}")
        return ok

    def _remove_dead_stub_regions(self) -> int:
        """Unlink the shm pools of stubs that are gone while Triton runs on. Triton may keep a dead
        stub's pool mapped (its model version never finishes unloading), but nothing opens it by
        name again: without this its file stays in /dev/shm until the server stops."""
        dead = {path: pid for path, pid in self.regions.items() if not stub_maps_region(pid, path)}
        for path in dead:
            self.regions.pop(path)
        return remove_stale_regions(dead, wait_s=0)

    def watch_once(self) -> bool:
        """One watchdog round; False when the service cannot be brought back."""
        if self.proc.poll() is not None:
            return self.restart(f"tritonserver exited with code {self.proc.returncode}")
        for model, why in self.broken_models().items():
            if not self.heal(model, why):
                return self.restart(f"could not reload {model}")
        if self.ready():
            self._not_ready_since = None
        else:
            now = time.monotonic()
            self._not_ready_since = self._not_ready_since or now
            if now - self._not_ready_since > self.sup.heal_timeout_s:
                return self.restart(f"not ready for {now - self._not_ready_since:.0f}s")
        return True

    # -- draining shutdown -------------------------------------------------------------------------

    def drain_and_stop(self, hurry: threading.Event | None = None) -> int:
        """Refuse new requests, let those in flight finish (up to the grace period), stop Triton."""
        hurry = hurry or threading.Event()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        t0 = time.monotonic()
        self.admission.set_draining(True)
        for model in ORCHESTRATORS:
            self.unload(model)  # readiness false; Triton itself refuses new requests for them
        first = self.admission.snapshot()["inflight"]
        self.log(f"draining: new requests refused, {first} in flight, grace {self.sup.drain_grace_s:.0f}s")
        left = first
        while left and not hurry.is_set() and time.monotonic() - t0 < self.sup.drain_grace_s:
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
            left = self.admission.snapshot()["inflight"]
        if left:
            self.log(f"drain: {left} of {first} requests still in flight after {time.monotonic() - t0:.1f}s")
        else:
            self.log(f"drained {first} requests in {time.monotonic() - t0:.1f}s")
        # Nothing in flight: Triton's own shutdown then only unloads idle model instances, the front
        # ones one after another (about 1 s each, 9 s in all), so it gets IDLE_STOP_S before its
        # process group is killed and the pools removed. With requests left, its own exit timeout.
        code = stop_server(self.proc, timeout=30.0 if left else IDLE_STOP_S)
        removed = self._remove_stale_regions()
        self.admission.close()
        how = f"exit code {code}" if code >= 0 or left else f"idle instances killed after {IDLE_STOP_S:g}s"
        self.log(f"tritonserver stopped ({how})" + (f", {removed} stale shm pools removed" if removed else ""))
        return code

    def _remove_stale_regions(self) -> int:
        """Once tritonserver is gone, remove the shm pools it left behind: the pool of a stub that
        died with a request on it belongs to a model version that never finishes unloading, so
        Triton never removes it (a few MiB of /dev/shm per such crash otherwise)."""
        removed = remove_stale_regions(self.regions)
        self.regions.clear()
        return removed

    def run(
        self,
        stop: threading.Event,
        hurry: threading.Event | None = None,
        before_drain: Callable[[], None] | None = None,
    ) -> int:
        """Watch until ``stop`` is set, then ``before_drain`` (e.g. stop the web UI), then drain;
        0 after a requested stop, 1 when healing failed."""
        healthy = True
        while not stop.is_set():
            if not self.watch_once():
                healthy = False
                break
            stop.wait(self.sup.probe_interval_s)
        if before_drain is not None:
            try:
                before_drain()
            except Exception as exc:  # noqa: BLE001 - Triton must still be drained and stopped
                self.log(f"stopping the companion failed: {exc!r}")
        if self.proc is not None and self.proc.poll() is None:
            self.drain_and_stop(hurry)
        return 0 if healthy else 1


def relay_signals(stop: threading.Event, hurry: threading.Event) -> None:
    """From now on SIGTERM/SIGINT set ``stop``, and the next one ``hurry``.

    Python runs a signal handler in the main thread between two bytecodes, possibly inside
    ``stop.wait()`` while that thread holds the event's lock: a handler that sets the event then
    waits for itself forever (seen: ``hndsr serve`` ignoring SIGTERM, Triton left running). So the
    handlers do nothing; the C-level handler writes the signal number to ``signal.set_wakeup_fd``'s
    socket, and a thread reading it sets the events.
    """
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    signal.set_wakeup_fd(sender.detach(), warn_on_full_buffer=False)  # the fd stays open for good
    wanted = {signal.SIGTERM, signal.SIGINT}
    for signum in wanted:
        signal.signal(signum, lambda *_: None)

    def relay() -> None:
        while data := receiver.recv(64):
            for signum in data:
                if signum in wanted:
                    (hurry if stop.is_set() else stop).set()

    threading.Thread(target=relay, name="signal-relay", daemon=True).start()


def serve_forever(
    opts: ServerOptions,
    sup: SupervisorOptions | None = None,
    companion: Callable[[ServerOptions], Callable[[], None]] | None = None,
) -> int:
    """``hndsr serve`` and ``hndsr up``: start, watch and heal; drain and stop on Ctrl-C/SIGTERM
    (twice: hurry). ``companion`` (the web UI of ``hndsr up``) starts once Triton is ready and
    returns its stop function, called first at shutdown: no new requests, then the drain."""
    stop, hurry = threading.Event(), threading.Event()
    relay_signals(stop, hurry)
    supervisor = Supervisor(opts, sup)
    supervisor.start()
    print(
        f"HNDSR on Triton is ready: HTTP {opts.host}:{opts.http_port}, gRPC {opts.host}:{opts.grpc_port}, "
        f"metrics http://{opts.host}:{opts.metrics_port}/metrics",
        flush=True,
    )
    stop_companion = None
    if companion is not None:
        try:
            stop_companion = companion(opts)
        except BaseException:
            supervisor.drain_and_stop(hurry)
            raise
    return supervisor.run(stop, hurry, stop_companion)
