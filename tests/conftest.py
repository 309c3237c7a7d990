"""Shared fixtures: a small random HNDSR model and a real tritonserver for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from hndsr.models.hndsr import HNDSR
from hndsr.serving.server import free_port  # noqa: F401 - the tests import it from here

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
T = TypeVar("T")


def random_model(seed: int = 0) -> HNDSR:
    """Random weights with the zero-initialised output layers perturbed, so every stage matters."""
    torch.manual_seed(seed)
    model = HNDSR()
    with torch.no_grad():
        for layer in (model.prior.delta_head, model.unet.out):
            layer.weight.normal_(0, 0.02)
            layer.bias.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="session")
def model() -> HNDSR:
    return random_model()


# -- processes, for the tests that check nothing is left behind -----------------------------------


def live_processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (process group, argv) of every process that is not a zombie."""
    from hndsr.serving.server import processes

    return {
        p.pid: (p.pgid, [a.decode(errors="replace") for a in p.argv]) for p in processes() if p.state not in ("Z", "X")
    }


def group_members(pgid: int) -> list[int]:
    return [pid for pid, (group, _) in live_processes().items() if group == pgid]


def mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line mentions ``text`` (e.g. a test's own model repository)."""
    return {pid: " ".join(argv) for pid, (_, argv) in live_processes().items() if any(text in a for a in argv)}


def stop_for_good(proc, work) -> None:
    """Kill a launcher (``subprocess.Popen``) still running, and every process that mentions its
    work directory (a launcher killed this way leaves its tritonserver and stubs behind)."""
    if proc.poll() is None:
        proc.kill()
    for pid in mentioning(str(work)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Launched:
    """An ``hndsr`` command (``serve`` by default) in a subprocess on free ports with its own work
    directory, its output collected line by line; ``prefix`` runs it through another command."""

    def __init__(self, work: Path, *args: str, command: str = "serve", prefix: tuple[str, ...] = ()) -> None:
        self.work = work
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        cli = Path(sys.executable).parent / "hndsr"
        ports = ["--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        self.proc = subprocess.Popen(
            [*prefix, str(cli), command, *ports, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HNDSR_WORK_DIR": str(work)},
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def triton(self) -> int | None:
        """The pid of its tritonserver, if one runs."""
        from hndsr.serving.server import processes

        found = [p.pid for p in processes(self.proc.pid) if p.argv and p.argv[0].endswith(b"tritonserver")]
        return found[0] if found else None

    def stop(self, drain: bool = True) -> None:
        """SIGTERM (the draining shutdown, ~10 s), then whatever is left killed. ``drain=False``
        (a fixture whose drain nothing checks): kill everything at once and remove the stubs' pools."""
        from hndsr.serving.server import remove_stale_regions, stub_processes

        if not drain and self.proc.poll() is None and (triton := self.triton()):
            regions = {stub.region: stub.pid for stub in stub_processes(triton).values()}
            stop_for_good(self.proc, self.work)
            remove_stale_regions(regions)
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(120)
        stop_for_good(self.proc, self.work)


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.1) -> T | None:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    return None


PRODUCTION_METRIC_FLAGS = ("--metrics-config=summary_latencies=true",)
"""The metric flags compose.yaml and the Kubernetes Deployment pass to Triton (test_deploy_manifests
checks that they agree), so the shared server exports what the dashboard and the alerts read."""


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> dict:
    """A real tritonserver (nvidia-pytriton bundle, CPU) serving this repository on free ports, with
    the production metric flags."""
    from hndsr.cli import ensure_exported
    from hndsr.serving.server import ServerOptions, running_server

    ensure_exported()
    work = tmp_path_factory.mktemp("triton")
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    opts = ServerOptions(**ports, work_dir=work, extra_args=PRODUCTION_METRIC_FLAGS)
    # Nothing is in flight at the end of the session: no need to wait ~9 s for a graceful unload.
    with running_server(opts, work / "tritonserver.log", stop_timeout=2) as server:
        urls = {"grpc": server.grpc, "http": server.http, "metrics": server.metrics}
        yield {**urls, "log": server.log_path, "proc": server.proc}
