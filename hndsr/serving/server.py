"""Run the real ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel on CPU.

The bundle ships only the Python backend; its stub binary for this interpreter is copied next to
``libtriton_python.so`` in a private backend directory. Models run in this same environment
(``PYTHONPATH``), which pins numpy < 2 because the bundled stub needs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hndsr.paths import REPO_ROOT
from hndsr.serving import admission

ADMIN_HEADER = "hndsr-admin-token"
"""Header that unlocks Triton's model-control (and logging/trace) API when the launcher enables it."""
RESTRICTED_APIS = "model-repository,logging,trace"
STUB_BINARY = b"triton_python_backend_stub"


@dataclass
class ServerOptions:
    model_repository: Path = REPO_ROOT / "model_repository"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    work_dir: Path = Path(os.environ.get("HNDSR_WORK_DIR", Path.home() / ".cache" / "hndsr"))
    log_verbose: int = 0
    model_config_name: str | None = None
    admin_token: str | None = None
    """When set: explicit model control (every model loaded at start), with the model-repository,
    logging and trace APIs refused unless the request carries ``ADMIN_HEADER: admin_token``."""
    admission_file: Path | None = None
    """State file of the orchestrator's admission control (default: ``work_dir/run/``, per HTTP port)."""
    max_inflight: int | None = None
    """Queued + running ``hndsr``/``hndsr_stream`` requests admitted at once (None: the model config's)."""
    max_running: int | None = None
    """Of those, how many run at once (None: the model config's)."""
    tritonserver: Path | None = None
    """A tritonserver with its own backends (the official container's ``tritonserver``); None: the
    nvidia-pytriton bundle, with the Python backend and stub for this interpreter."""
    extra_args: tuple[str, ...] = ()
    """More tritonserver flags, appended last (e.g. ``--allow-gpu-metrics=true`` on a GPU)."""

    def admission_path(self) -> Path:
        return self.admission_file or self.work_dir / "run" / f"admission-{self.http_port}.json"


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise RuntimeError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0")
    return Path(spec.origin).parent


def prepare_backend_dir(work_dir: Path) -> Path:
    """Backend directory with the Python backend and the stub for this Python version."""
    root = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    target = work_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in [*(root / "backends" / "python").iterdir(), stub]:
        if src.is_file():
            dst = target / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copy2(src, dst)
    return target.parent


def server_command(opts: ServerOptions, backend_dir: Path | None) -> list[str]:
    if opts.tritonserver is None:
        binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        own = [f"--backend-directory={backend_dir}", "--allow-gpu-metrics=false"]
    else:
        binary, own = opts.tritonserver, []
    cmd = [
        str(binary),
        f"--model-repository={opts.model_repository}",
        *own,
        f"--http-address={opts.host}",
        f"--http-port={opts.http_port}",
        f"--grpc-address={opts.host}",
        f"--grpc-port={opts.grpc_port}",
        f"--metrics-address={opts.host}",
        f"--metrics-port={opts.metrics_port}",
        "--allow-metrics=true",
        f"--log-verbose={opts.log_verbose}",
        "--exit-timeout-secs=10",
    ]
    if opts.model_config_name:
        cmd.append(f"--model-config-name={opts.model_config_name}")
    if opts.admin_token:
        restriction = f"{RESTRICTED_APIS}:{ADMIN_HEADER}={opts.admin_token}"
        cmd += [
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-restricted-api={restriction}",
            f"--grpc-restricted-protocol={restriction}",
        ]
    return cmd + list(opts.extra_args)


SMALL_SHM_BYTES = 2 << 30
"""Below this much /dev/shm the launcher bounds requests by what the stubs' pools can hold."""
SMALL_SHM_BLS_CHUNK = 2
"""Tiles per BLS stage call then (a stage pool stays near 4 MiB)."""


def shm_limits(total_bytes: int) -> tuple[int | None, int | None]:
    """(max output pixels, BLS chunk) for a /dev/shm of ``total_bytes``; (None, None): no bound needed.

    Every Python-backend stub has a pool that grows to the largest tensors it has carried and never
    shrinks. Measured in a 64 MiB /dev/shm: each front's pool grows by about 3.1 bytes per output
    pixel (image in, result out), the core's by as much plus ~3 MiB of chunked stage tensors,
    each stage's to ~4 MiB, the rest stay at 1 MiB. The bound assumes every front and core
    instance once carries the largest request, so the pools can never fill /dev/shm; a larger
    request is refused with INVALID_ARG naming the limit instead of leaving a full /dev/shm behind
    (on which no request at all succeeds any more).
    """
    if total_bytes >= SMALL_SHM_BYTES:
        return None, None
    mib = 1 << 20
    stubs = 2 * admission.FRONT_INSTANCES + admission.CORE_INSTANCES + 4
    reserve = stubs * mib + 4 * 4 * mib + admission.CORE_INSTANCES * 3 * mib
    per_pixel = 3.2 * (2 * admission.FRONT_INSTANCES + admission.CORE_INSTANCES)
    return max(0, int((total_bytes - reserve) / per_pixel)), SMALL_SHM_BLS_CHUNK


def shm_size(path: str = "/dev/shm") -> int:
    stat = os.statvfs(path)
    return stat.f_blocks * stat.f_frsize


def server_env(opts: ServerOptions | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if opts is None or opts.tritonserver is None:  # the nvidia-pytriton bundle
        libs = _pytriton_root().parent / "nvidia_pytriton.libs"
        lib_path = [str(libs), sysconfig.get_config_var("LIBDIR") or "", env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in lib_path if p)
        # The stub's embedded interpreter finds its prefix through "python3" on PATH: putting this
        # environment's bin first makes it use this environment (and its numpy < 2).
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if opts is not None:
        env[admission.ENV_FILE] = str(opts.admission_path())
        limits = {admission.ENV_MAX_INFLIGHT: opts.max_inflight, admission.ENV_MAX_RUNNING: opts.max_running}
        env.update({key: str(value) for key, value in limits.items() if value is not None})
        max_pixels, chunk = shm_limits(shm_size())
        if max_pixels is not None:
            env[admission.ENV_MAX_OUTPUT_PIXELS] = str(max_pixels)
            env[admission.ENV_BLS_CHUNK] = str(chunk)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for servers started on the side: tests, ``hndsr eval``)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(host: str, http_port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    url = f"http://{host}:{http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"tritonserver not ready at {url} after {timeout:.0f}s")


def start_server(opts: ServerOptions, log_file: Path | None = None) -> subprocess.Popen:
    """Start tritonserver in its own process group; the caller waits for readiness."""
    backend_dir = None if opts.tritonserver else prepare_backend_dir(opts.work_dir)
    admission.reset(opts.admission_path())
    with open(log_file, "ab") if log_file else contextlib.nullcontext() as out:  # the child keeps its own copy
        return subprocess.Popen(
            server_command(opts, backend_dir),
            env=server_env(opts),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    instance: str
    state: str
    region: str = ""
    """Its shared-memory pool, ``/dev/shm/triton_python_backend_shm_region_...``."""


@dataclass(frozen=True)
class Process:
    """One entry of /proc."""

    pid: int
    state: str
    ppid: int
    pgid: int
    argv: tuple[bytes, ...]


def processes(parent: int | None = None) -> list[Process]:
    """Every process in /proc, or only the children of ``parent`` (zombies included: their ``argv``
    is empty). The watchdog asks for its children twice a second: other processes' command lines
    are not read then."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if parent is not None and int(fields[1]) != parent:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = tuple(a for a in f.read().split(b"\0") if a)
            found.append(Process(int(entry.name), fields[0].decode(), int(fields[1]), int(fields[3]), argv))
        except (OSError, IndexError, ValueError):
            continue
    return found


def stub_processes(parent: int) -> dict[str, Stub]:
    """Python-backend stubs whose parent is ``parent``, by instance name (e.g. ``unet_0_0``).

    A zombie has no command line any more, so a dead stub is simply absent."""
    found: dict[str, Stub] = {}
    for proc in processes(parent):
        argv = proc.argv
        if len(argv) < 9 or not argv[0].endswith(STUB_BINARY):
            continue
        model = Path(argv[1].decode()).parent.parent.name
        instance = argv[8].decode()
        found[instance] = Stub(proc.pid, model, instance, proc.state, f"/dev/shm/{argv[2].decode()}")
    return found


def stub_maps_region(pid: int, path: str) -> bool:
    """Whether process ``pid`` is a live stub whose pool is ``path``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 2 and argv[0].endswith(STUB_BINARY) and path.endswith(argv[2].decode())


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (Triton drains in-flight requests), then SIGKILL after ``timeout``; stubs left
    behind (Triton exits without them once its exit timeout expires) are killed too, and their
    shared-memory pools, which Triton then leaves in /dev/shm, removed."""
    regions = {s.region: s.pid for s in stub_processes(proc.pid).values()}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group: only its stubs can be left
    remove_stale_regions(regions)
    return proc.returncode


def remove_stale_regions(regions: dict[str, int], wait_s: float = 5.0) -> int:
    """Remove the shm pools (path -> stub pid) whose stubs are gone; returns how many."""
    deadline = time.monotonic() + wait_s
    while any(stub_maps_region(pid, path) for path, pid in regions.items()) and time.monotonic() < deadline:
        time.sleep(0.1)  # stubs killed with their process group are on their way out
    removed = 0
    for path, pid in regions.items():
        if not stub_maps_region(pid, path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
    return removed


# -- one lifecycle: start, wait until ready, hand over, always stop --------------------------------


class ServerNotReady(RuntimeError):
    """tritonserver exited or was not ready in time; the message ends with its log's error and last lines."""


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised in the main thread while ``running_server`` holds a server. A
    ``KeyboardInterrupt``, so whatever stops on Ctrl-C (pytest, Gradio, click) stops on it too."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
        self.code = 128 + signum
        """The conventional exit status of a process ended by this signal."""


def _interruption(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


class _SignalGuard:
    """In the main thread, while a server is held: SIGTERM raises ``Terminated`` and SIGINT
    ``KeyboardInterrupt``, once; signals that come while the server starts or stops, or after that
    first one, wait until it stopped. Handlers a program installed itself (or ignored signals) stay."""

    DEFAULTS = ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler))

    def __init__(self) -> None:
        self.raising = False
        self.pending: list[int] = []
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum, default in self.DEFAULTS:
                if signal.getsignal(signum) is default:
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if not self.raising:
            self.pending.append(signum)
            return
        self.raising = False
        raise _interruption(signum)

    def arm(self) -> None:
        """Raise from now on; at once for a signal that came while the server started."""
        if self.pending:
            raise _interruption(self.pending.pop(0))
        self.raising = True

    def hold(self) -> None:
        self.raising = False

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.pending and exc_type is None:
            raise _interruption(self.pending[0])  # a signal that came while the server stopped


@dataclass(frozen=True)
class RunningServer:
    """A ready tritonserver held by ``running_server``."""

    opts: ServerOptions
    proc: subprocess.Popen
    log_path: Path | None

    @property
    def grpc(self) -> str:
        return f"{self.opts.host}:{self.opts.grpc_port}"

    @property
    def http(self) -> str:
        return f"{self.opts.host}:{self.opts.http_port}"

    @property
    def metrics(self) -> str:
        return f"http://{self.opts.host}:{self.opts.metrics_port}/metrics"


_LOG_ERROR = re.compile(r"^(E\d{4} |\[libprotobuf ERROR|error: )")


def log_excerpt(log_file: Path | None, errors: int = 20, tail: int = 15) -> str:
    """tritonserver's error lines and last lines (its settings table would hide the cause)."""
    if log_file is None or not log_file.exists():
        return ""
    lines = [line[:600] for line in log_file.read_text(errors="replace").splitlines()]
    first = [line for line in lines if _LOG_ERROR.match(line)][:errors]
    last = [line for line in lines[-tail:] if line not in first]
    return "\n".join([*first, "...", *last] if first else last)


@contextlib.contextmanager
def running_server(
    opts: ServerOptions, log_file: Path | None = None, ready_timeout: float = 300.0, stop_timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Start tritonserver, wait until it is ready and yield it; on every way out (the block's end,
    an exception, a readiness failure, Ctrl-C, SIGTERM as ``Terminated``) stop it and its process
    group with ``stop_server`` (SIGKILL after ``stop_timeout``: Triton unloads the front's many
    stub instances one by one, about 9 s). Raises ``ServerNotReady`` when it exits or is not ready in time."""
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    with _SignalGuard() as guard:
        proc = start_server(opts, log_file)
        try:
            guard.arm()
            try:
                wait_ready(opts.host, opts.http_port, ready_timeout, proc)
            except (RuntimeError, TimeoutError) as exc:
                raise ServerNotReady(f"{exc} (log: {log_file})\n{log_excerpt(log_file)}") from exc
            yield RunningServer(opts, proc, log_file)
        finally:
            try:
                guard.hold()
            finally:
                stop_server(proc, stop_timeout)
