"""Admission control shared by the front stubs (``hndsr``, ``hndsr_stream``) and ``hndsr_core``.

Triton's reject-when-full queue belongs to the dynamic batcher, which a ``max_batch_size: 0`` model
cannot enable, so the front models keep their own bounded queue: at most ``max_inflight`` requests
queued or running across all of their stub processes, at most ``max_running`` of them running (in
``hndsr_core``), the rest started in arrival order (FIFO across processes). A request beyond the
limit is refused at once. The launcher sets ``draining`` on shutdown; from then on every new
request is refused. The same state carries, per admitted request, the one thing the front must
tell the core while it runs: "cancelled" (client gone or deadline passed), because BLS ``cancel()``
arrived only in Triton 25.05. This file exists for what Triton 24.10 cannot do itself (the global
bounded queue and cancellation); progress goes from the core to the front in decoupled BLS responses.

The state is a small JSON file guarded by ``flock`` (plus a thread lock, since ``flock`` does not
exclude threads sharing one open file). Each entry carries the pid of the stub that admitted it,
and entries of dead processes are dropped on every operation, so a stub killed with ``kill -9``
cannot leak capacity.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hndsr_client.interface import DRAINING, OVERLOADED, mentions

DEFAULT_MAX_INFLIGHT = 4
"""Queued + running requests admitted at once (all orchestrator stubs together)."""
DEFAULT_MAX_RUNNING = 2
"""Requests running their pipeline at once; the others wait in FIFO order."""
DEFAULT_MAX_QUEUE_WAIT_S = 300.0
"""An admitted request that cannot start within this time is refused (bounded waiting)."""
DEFAULT_STAGE_RETRY_S = 60.0
"""How long a request retries a stage that is being healed (stub died, model reloading)."""
SPARE_FRONT_INSTANCES = 2
"""Front instances beyond ``max_inflight``: always free to refuse excess requests at once."""
FRONT_INSTANCES = DEFAULT_MAX_INFLIGHT + SPARE_FRONT_INSTANCES
CORE_INSTANCES = DEFAULT_MAX_RUNNING
COMPUTE_NICENESS = 5
"""The compute stubs (``hndsr_core`` and the CPU stage models) lower their own CPU priority by
this much, so the front models' admission checks, refusals and health answers are scheduled
first while admitted requests keep every core busy (fast refusal under load)."""


def lower_priority() -> None:
    """Called by a compute stub at start (raising niceness needs no privilege)."""
    with contextlib.suppress(OSError):
        os.nice(COMPUTE_NICENESS)


TRANSIENT = (
    "not healthy",
    "no available versions",
    "unknown model",
    "is not ready",
    "health mutex",
    "unavailable",
    "failed to connect",
    "stub process",
)
"""Triton's messages for a model being healed by the launcher (stub died, reloading): worth
retrying. Triton's own text: its BLS errors reach the caller as INTERNAL whatever their code."""


def is_transient(message: str) -> bool:
    return mentions(message, TRANSIENT)


ENV_FILE = "HNDSR_ADMISSION_FILE"
ENV_MAX_INFLIGHT = "HNDSR_MAX_INFLIGHT"
ENV_MAX_RUNNING = "HNDSR_MAX_RUNNING"
ENV_MAX_OUTPUT_PIXELS = "HNDSR_MAX_OUTPUT_PIXELS"
"""Set by the launcher when /dev/shm is small (``hndsr.serving.server.shm_limits``)."""
ENV_BLS_CHUNK = "HNDSR_BLS_CHUNK"
"""Tiles per BLS stage call, set by the launcher when /dev/shm is small."""


def default_path() -> Path:
    """The state file when the launcher did not name one: per tritonserver process (the stubs' parent)."""
    return Path(tempfile.gettempdir()) / f"hndsr-admission-{os.getppid()}.json"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass(frozen=True)
class Ticket:
    id: int
    admitted: float
    """``time.time()`` at admission."""


@dataclass(frozen=True)
class Refusal:
    reason: str
    """``OVERLOADED`` or ``DRAINING``."""
    message: str


class Admission:
    """One per process; every method is thread-safe and takes the file lock for microseconds."""

    def __init__(self, path: Path, max_inflight: int, max_running: int) -> None:
        if max_inflight < 1 or max_running < 1:
            raise ValueError("max_inflight and max_running must be >= 1")
        self.path = Path(path)
        self.max_inflight = max_inflight
        self.max_running = min(max_running, max_inflight)
        self._thread_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    @classmethod
    def from_env(cls, params: dict[str, str] | None = None) -> Admission:
        """Limits from the environment (set by the launcher), else the model config's parameters."""
        params = params or {}

        def pick(env: str, key: str, default: int) -> int:
            return int(os.environ.get(env) or params.get(key) or default)

        path = Path(os.environ.get(ENV_FILE) or default_path())
        inflight = pick(ENV_MAX_INFLIGHT, "max_inflight", DEFAULT_MAX_INFLIGHT)
        running = pick(ENV_MAX_RUNNING, "max_running", DEFAULT_MAX_RUNNING)
        # Queued requests wait in front instances, running ones in core instances: more than the
        # instances allow would queue inside Triton, out of reach of deadlines and fast refusal.
        inflight = min(inflight, int(params.get("front_instances", 1 << 30)) - SPARE_FRONT_INSTANCES)
        running = min(running, int(params.get("core_instances", 1 << 30)))
        return cls(path, max(1, inflight), max(1, running))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextmanager
    def _state(self, write: bool = True):
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                os.lseek(self._fd, 0, os.SEEK_SET)
                raw = os.read(self._fd, 1 << 20)
                try:
                    state = json.loads(raw) if raw else {}
                except ValueError:
                    state = {}
                state.setdefault("entries", [])
                state.setdefault("next", 1)
                state.setdefault("draining", False)
                state.setdefault("admitted_total", 0)
                state.setdefault("refused_total", 0)
                before = len(state["entries"])
                state["entries"] = [e for e in state["entries"] if _alive(e["pid"])]
                changed = [len(state["entries"]) != before]
                yield state, changed
                if write or changed[0]:
                    data = json.dumps(state, separators=(",", ":")).encode()
                    os.ftruncate(self._fd, 0)
                    os.pwrite(self._fd, data, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def admit(self, deadline: float | None = None) -> Ticket | Refusal:
        """A ticket (queued) or a refusal, at once. ``deadline``: ``time.time()`` after which the
        client no longer wants the answer (the core stops between DDIM steps)."""
        with self._state() as (state, _):
            entries = state["entries"]
            if state["draining"]:
                state["refused_total"] += 1
                return Refusal(DRAINING, f"{DRAINING}: not accepting new requests, retry on another replica")
            if len(entries) >= self.max_inflight:
                state["refused_total"] += 1
                running = sum(e["running"] for e in entries)
                return Refusal(
                    OVERLOADED,
                    f"{OVERLOADED}: {len(entries)} requests queued or running ({running} running), "
                    f"limit {self.max_inflight}; retry later",
                )
            ticket = Ticket(state["next"], time.time())
            state["next"] += 1
            state["admitted_total"] += 1
            entries.append(
                {"id": ticket.id, "pid": os.getpid(), "t": ticket.admitted, "running": 0, "deadline": deadline}
            )
            return ticket

    def try_start(self, ticket: Ticket) -> bool:
        """Start ``ticket`` if it is the oldest queued request and a running slot is free."""
        with self._state(write=False) as (state, changed):
            entries = state["entries"]
            queued = [e for e in entries if not e["running"]]
            if not queued or queued[0]["id"] != ticket.id:
                return False
            if sum(e["running"] for e in entries) >= self.max_running:
                return False
            queued[0]["running"] = 1
            changed[0] = True
            return True

    def wait_start(self, ticket: Ticket, should_stop: Callable[[], bool], max_wait_s: float, poll_s: float = 0.02):
        """Block until ``ticket`` may run (True), ``should_stop()`` (False) or ``max_wait_s`` passes (None)."""
        deadline = time.monotonic() + max_wait_s
        while True:
            if self.try_start(ticket):
                return True
            if should_stop():
                return False
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)

    def release(self, ticket: Ticket) -> None:
        with self._state() as (state, _):
            state["entries"] = [e for e in state["entries"] if e["id"] != ticket.id]

    def cancel(self, ticket: Ticket) -> None:
        """The client went away or its deadline passed: the core stops at its next check."""
        with self._state() as (state, _):
            for e in state["entries"]:
                if e["id"] == ticket.id:
                    e["cancelled"] = 1

    def status(self, ticket_id: int) -> dict | None:
        """The entry of an admitted request (None once released or its front is gone)."""
        with self._state(write=False) as (state, _):
            return next((dict(e) for e in state["entries"] if e["id"] == ticket_id), None)

    def should_stop(self, ticket_id: int) -> bool:
        """For the core: cancelled, past its deadline, or no longer admitted."""
        entry = self.status(ticket_id)
        if entry is None or entry.get("cancelled"):
            return True
        return entry.get("deadline") is not None and time.time() > entry["deadline"]

    def set_draining(self, draining: bool = True) -> None:
        with self._state() as (state, _):
            state["draining"] = draining

    def snapshot(self) -> dict:
        """Counts for the launcher, the tests and the reliability suite."""
        with self._state(write=False) as (state, _):
            entries = state["entries"]
            running = sum(e["running"] for e in entries)
            return {
                "inflight": len(entries),
                "running": running,
                "queued": len(entries) - running,
                "draining": state["draining"],
                "admitted_total": state["admitted_total"],
                "refused_total": state["refused_total"],
                "max_inflight": self.max_inflight,
                "max_running": self.max_running,
            }


def reset(path: Path) -> None:
    """Start a server with an empty state (a previous run's file may hold stale pids)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("{}")
