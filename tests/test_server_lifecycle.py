"""One server lifecycle: ``running_server`` stops tritonserver and its whole process group on every
way out (the block's end, an exception, a readiness failure, Ctrl-C, SIGTERM), and the commands that
start one exit with the right status and leave no process behind.

The fast tests run a fake tritonserver (``ServerOptions.tritonserver``): a small Python script that
answers readiness, leaves a "stub" child in its process group and exits 0 on SIGTERM, like Triton
after its exit timeout. The integration tests start the real bundled one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image

from hndsr.serving.server import (
    RunningServer,
    ServerNotReady,
    ServerOptions,
    Terminated,
    free_port,
    running_server,
)

from .conftest import ROOT, group_members, live_processes, mentioning, wait_until

FAKE_TRITON = '''#!{python}
"""A fake tritonserver: --fake-mode=ready|never|exit3."""
import http.server, signal, subprocess, sys

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
print("fake tritonserver starting", flush=True)
if args["fake-mode"] == "exit3":
    print("boom: no models", flush=True)
    sys.exit(3)
stub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", __file__])  # same group
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits, leaving its stub (Triton's exit timeout)
status = 200 if args["fake-mode"] == "ready" else 503

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_):
        pass

http.server.HTTPServer((args["http-address"], int(args["http-port"])), Health).serve_forever()
'''


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def open_files() -> set[str]:
    """Paths this process holds open."""
    paths = set()
    for fd in os.scandir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            paths.add(os.readlink(fd.path))
    return paths


def fake_options(tmp_path: Path, mode: str) -> ServerOptions:
    fake = tmp_path / "tritonserver"
    fake.write_text(FAKE_TRITON.format(python=sys.executable))
    fake.chmod(0o755)
    return ServerOptions(
        model_repository=tmp_path / "models",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=tmp_path / "work",
        tritonserver=fake,
        extra_args=(f"--fake-mode={mode}",),
    )


# -- fast: a fake tritonserver ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def default_signal_handlers():
    """Each test starts with Python's default SIGTERM/SIGINT handlers, as a command does: a
    session fixture's running server (``triton`` in conftest) holds its own guard meanwhile."""
    previous = {
        s: signal.signal(s, d)
        for s, d in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler))
    }
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_ready_server_yields_urls_then_group_stopped(tmp_path):
    opts = fake_options(tmp_path, "ready")
    log = tmp_path / "logs" / "tritonserver.log"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with running_server(opts, log, ready_timeout=30) as server:
            assert isinstance(server, RunningServer)
            assert (server.grpc, server.http) == (f"127.0.0.1:{opts.grpc_port}", f"127.0.0.1:{opts.http_port}")
            assert server.metrics == f"http://127.0.0.1:{opts.metrics_port}/metrics"
            assert http_status(f"http://{server.http}/v2/health/ready") == 200
            assert str(log) not in open_files(), "this process kept the log open (only tritonserver writes it)"
            pgid = server.proc.pid
            assert wait_until(lambda: len(group_members(pgid)) >= 2, 30), "the fake's stub never started"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], "a file was left to the GC"
    assert server.proc.returncode == 0  # tritonserver's own exit status, after SIGTERM
    assert group_members(pgid) == [], "tritonserver or its stub outlived running_server"
    assert "fake tritonserver starting" in log.read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_error_in_block_stops_group(tmp_path, error):
    opts = fake_options(tmp_path, "ready")
    with pytest.raises(type(error)), running_server(opts, tmp_path / "t.log", ready_timeout=30) as server:
        pgid = server.proc.pid
        assert wait_until(lambda: len(group_members(pgid)) >= 2, 30)
        raise error
    assert group_members(pgid) == []


def test_sigterm_in_block_raises_terminated_and_stops_group(tmp_path):
    opts = fake_options(tmp_path, "ready")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Terminated) as caught, running_server(opts, tmp_path / "t.log", ready_timeout=30) as server:
        pgid = server.proc.pid
        assert wait_until(lambda: len(group_members(pgid)) >= 2, 30)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else the next line ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: False, 10)  # the signal interrupts this wait
        pytest.fail("SIGTERM did not raise")
    assert caught.value.code == 128 + signal.SIGTERM
    assert group_members(pgid) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_readiness_timeout_stops_group(tmp_path):
    opts = fake_options(tmp_path, "never")
    log = tmp_path / "t.log"
    started = time.monotonic()
    with pytest.raises(ServerNotReady, match="not ready") as caught, running_server(opts, log, ready_timeout=3):
        pytest.fail("a server that never answers 200 was handed over")
    assert time.monotonic() - started < 3 + 30
    assert "fake tritonserver starting" in str(caught.value)  # the log's tail comes with the error
    assert mentioning(str(opts.tritonserver)) == {}, "the fake tritonserver or its stub was left running"


def test_exit_before_ready_reports_code_and_log(tmp_path):
    opts = fake_options(tmp_path, "exit3")
    with pytest.raises(ServerNotReady, match="exited with code 3") as caught, running_server(opts, tmp_path / "t.log"):
        pytest.fail("handed over a server that exited")
    assert "boom: no models" in str(caught.value)


@pytest.mark.parametrize(("mode", "code"), [("never", 1), ("ready", 128 + signal.SIGTERM)])
def test_command_exit_status(tmp_path, mode, code):
    """The commands' wrapper: not ready -> exit status 1; SIGTERM -> Triton stopped, then 143."""
    from hndsr.cli import _server

    opts = fake_options(tmp_path, mode)
    with pytest.raises(typer.Exit) as caught, _server(opts, tmp_path / "t.log", ready_timeout=3):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else the next line ends pytest
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: False, 10)
    assert caught.value.exit_code == code
    assert mentioning(str(opts.tritonserver)) == {}


# -- integration: the real bundled tritonserver ----------------------------------------------------

SLOW_CONFIG = """name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
SLOW_MODEL = """import os, pathlib, time


class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path(__file__).with_name("stub.pid").write_text(str(os.getpid()))
        time.sleep(600)  # never ready
"""


def model_repository(root: Path, config: str, model: str = "") -> Path:
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "config.pbtxt").write_text(config)
    (root / "slow" / "1" / "model.py").write_text(model)
    return root


def real_options(tmp_path: Path, repo: Path) -> ServerOptions:
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    return ServerOptions(model_repository=repo, work_dir=tmp_path / "work", **ports)


@pytest.mark.integration
def test_real_readiness_timeout_leaves_no_process(tmp_path):
    """A model whose stub never finishes loading: the readiness wait fails while tritonserver and
    the stub are alive; both are gone afterwards."""
    repo = model_repository(tmp_path / "models", SLOW_CONFIG, SLOW_MODEL)
    opts = real_options(tmp_path, repo)
    with pytest.raises(ServerNotReady, match="not ready"), running_server(opts, tmp_path / "t.log", ready_timeout=10):
        pytest.fail("a server whose model never loads was handed over")
    stub_pid = repo / "slow" / "1" / "stub.pid"
    assert stub_pid.exists(), "the stub had not started within the readiness timeout: nothing was checked"
    assert mentioning(str(repo)) == {}, "tritonserver or its stub outlived the readiness failure"
    assert int(stub_pid.read_text()) not in live_processes()


@pytest.mark.integration
def test_real_broken_config_reports_and_leaves_no_process(tmp_path):
    repo = model_repository(tmp_path / "models", 'name: "slow"\nbackend: "python"\nthis is not a config\n')
    opts = real_options(tmp_path, repo)
    with pytest.raises(ServerNotReady, match="exited with code") as caught, running_server(opts, tmp_path / "t.log"):
        pytest.fail("a server with a broken model config was handed over")
    assert "model directory 'slow'" in str(caught.value)  # the log's error lines name the model
    assert mentioning(str(repo)) == {}


def _eval_triton(eval_pid: int) -> tuple[int, int] | None:
    """(pid, HTTP port) of the tritonserver that ``hndsr eval`` (``eval_pid``) started, if any."""
    for pid, (_, argv) in live_processes().items():
        if argv and argv[0].endswith("tritonserver") and _parent(pid) == eval_pid:
            return pid, int(next(a.split("=", 1)[1] for a in argv if a.startswith("--http-port=")))
    return None


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError):
        return -1


@pytest.mark.integration
def test_sigterm_to_eval_stops_its_tritonserver(tmp_path):
    """``hndsr eval`` killed with SIGTERM while its tritonserver is up: exit status 143, no orphan."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(data / "a.png")
    cli = Path(sys.executable).parent / "hndsr"
    cmd = [str(cli), "eval", "--data", str(data), "--scale", "8", "--steps", "0,4", "--triton-steps", "0"]
    cmd += ["--limit", "1", "--no-grid-sample", "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        found = wait_until(lambda: proc.poll() is None and _eval_triton(proc.pid), 300, 0.2)
        assert found, f"hndsr eval started no tritonserver:\n{proc.communicate(timeout=60)[0][-3000:]}"
        triton_pid, http_port = found
        ready = wait_until(lambda: http_status(f"http://127.0.0.1:{http_port}/v2/health/ready") == 200, 300, 0.2)
        assert ready and proc.poll() is None, "eval's tritonserver never became ready, or eval ended first"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = group_members(triton_pid)  # tritonserver and its stubs
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # so that a failure leaves no orphan either
    assert left == [], f"tritonserver or its stubs outlived hndsr eval:\n{out[-3000:]}"
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]


RELAY_CHILD = """
import os, signal, threading, time
from hndsr.serving.supervisor import relay_signals
stop, hurry = threading.Event(), threading.Event()
relay_signals(stop, hurry)
with stop._cond:  # where a handler setting the event would wait for itself: inside stop.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)  # the Python-level handler runs here, in this thread
print(stop.wait(30), hurry.is_set(), flush=True)
os.kill(os.getpid(), signal.SIGINT)
print(hurry.wait(30), flush=True)
"""


def test_signals_reach_serve_even_while_its_main_thread_holds_the_event_lock():
    """``hndsr serve`` once ignored SIGTERM: its handler set a ``threading.Event`` and deadlocked
    when the signal arrived inside ``Event.wait``. The first signal sets stop, the second hurry."""
    result = subprocess.run(
        [sys.executable, "-c", RELAY_CHILD], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True"], result.stdout + result.stderr
