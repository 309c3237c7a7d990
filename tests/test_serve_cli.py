"""`hndsr serve` starts the real tritonserver, reports readiness, and stops cleanly on SIGTERM; a
failing start is a failure status. Every command line of the project explains every option."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hndsr_client import HNDSRClient

from .conftest import ROOT, free_port, mentioning


@pytest.mark.integration
def test_serve_ready_then_sigterm(tmp_path):
    http, grpc, metrics = free_port(), free_port(), free_port()
    cli = Path(sys.executable).parent / "hndsr"
    proc = subprocess.Popen(
        [str(cli), "serve", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HNDSR_WORK_DIR": str(tmp_path)},
    )
    try:
        deadline = time.monotonic() + 300
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "is ready" in line or proc.poll() is not None:
                break
        assert "is ready" in lines[-1], "".join(lines)
        assert f"127.0.0.1:{grpc}" in lines[-1]
        with HNDSRClient(f"127.0.0.1:{grpc}") as client:
            assert client.health()["model_ready"]
        proc.send_signal(signal.SIGTERM)
        # Usually 10 s. The launcher bounds it at about 50 s: two unload calls of at most 5 s, 30 s
        # for tritonserver before SIGKILL (if its own exit hangs), 5 s for stale shm pools.
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("hndsr serve still running 120 s after SIGTERM:\n" + "".join(lines) + proc.communicate()[0])
        assert proc.returncode == 0, out
        assert "tritonserver stopped" in out
        assert mentioning(str(tmp_path)) == {}  # no tritonserver or stub of this run left
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in mentioning(str(tmp_path)):  # a launcher killed above leaves its Triton behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
def test_serve_exits_nonzero_when_triton_fails_and_leaves_no_process(tmp_path):
    """A model repository Triton cannot load: ``hndsr serve`` exits with a failure status, and no
    tritonserver or stub of that repository is left running."""
    repo = tmp_path / "models"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nnot a field\n')
    cli = Path(sys.executable).parent / "hndsr"
    ports = [f"--{name}-port={free_port()}" for name in ("http", "grpc", "metrics")]
    result = subprocess.run(
        [str(cli), "serve", f"--model-repository={repo}", *ports],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HNDSR_WORK_DIR": str(tmp_path / "work")},
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "before becoming ready" in result.stdout + result.stderr
    assert mentioning(str(repo)) == {}


def _commands(app) -> dict:
    import typer.main

    command = typer.main.get_command(app)
    return dict(command.commands) if hasattr(command, "commands") else {command.name: command}


def test_every_option_has_help():
    """``--help`` explains every option and argument of every typer command line."""
    from hndsr import bench_gpu, cli, reliability, train_gpu

    missing = [
        f"{module.__name__} {name} {param.name}"
        for module in (cli, reliability, train_gpu, bench_gpu)
        for name, command in _commands(module.app).items()
        for param in command.params
        if not getattr(param, "help", None)
    ]
    assert not missing, missing


def test_gpu_scripts_import_from_the_bare_source_tree():
    """The lent GPU machine gets the repository, not installed packages: the scripts its docstrings
    name must import with ``PYTHONPATH=.:client`` alone (editable installs hidden here)."""
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "sys.path = [p for p in sys.path if 'editable' not in p]\n"
        "import hndsr.adversarial, hndsr.bench_gpu, hndsr.distill, hndsr.train_gpu\n"
        "print(hndsr.train_gpu.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": ".:client"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT / "hndsr" / "train_gpu.py")
    for script in ("train_gpu", "bench_gpu"):
        assert "PYTHONPATH=.:client python3 -m hndsr." + script in (ROOT / "hndsr" / f"{script}.py").read_text()
