"""`hndsr serve` starts the real tritonserver, reports readiness, and stops cleanly on SIGTERM; a
failing start is a failure status. Every command line of the project explains every option."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hndsr_client import HNDSRClient

from .conftest import ROOT, free_port, mentioning, stop_for_good


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


def _commands(command, prefix: str = "") -> dict:
    """Every leaf command of a click command tree, by its full name."""
    subs = getattr(command, "commands", None)
    if not subs:
        return {prefix or command.name: command}
    found = {}
    for name, sub in subs.items():
        found.update(_commands(sub, f"{prefix} {name}".strip()))
    return found


def test_every_option_has_help():
    """``--help`` explains every option and argument of every entry point's commands (``hndsr``
    with its ``train`` sub-commands, ``hndsr-reliability``)."""
    import typer.main

    import hndsr_reliability
    from hndsr import cli

    commands = {}
    for entry, app in (("hndsr", cli.app), ("hndsr-reliability", hndsr_reliability.app)):
        for name, command in _commands(typer.main.get_command(app)).items():
            commands[f"{entry} {name}"] = command
    assert {"hndsr train phases", "hndsr train distill", "hndsr train adversarial", "hndsr train gpu"} <= set(commands)
    assert "hndsr bench-gpu" in commands
    missing = [
        f"{name} {param.name}" for name, command in commands.items() for param in command.params if not param.help
    ]
    assert not missing, missing


def test_gpu_commands_run_from_the_bare_source_tree():
    """The lent GPU machine gets the repository, not installed packages: the commands the docs name
    (``python3 -m hndsr.cli train gpu`` / ``bench-gpu``) must start with ``PYTHONPATH=.:client``
    alone (editable installs hidden here)."""
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "sys.path = [p for p in sys.path if 'editable' not in p]\n"
        "import runpy\n"
        "import hndsr.training.gpu, hndsr.evaluation.bench_gpu\n"
        "print(hndsr.training.gpu.__file__)\n"
        "sys.argv = ['hndsr', *sys.argv[1:]]\n"
        "runpy.run_module('hndsr.cli', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": ".:client"}
    for args in (["train", "gpu", "--help"], ["bench-gpu", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == str(ROOT / "hndsr" / "training" / "gpu.py")
        assert "Usage:" in done.stdout
    assert "PYTHONPATH=.:client python3 -m hndsr.cli train gpu" in (ROOT / "hndsr" / "training" / "gpu.py").read_text()


def _read_until(proc: subprocess.Popen, marker: str, lines: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if marker in line:
            return True
        if not line and proc.poll() is not None:
            return False
    return False


@pytest.mark.integration
def test_up_heals_a_stage_crash_and_drains_the_ui_request_on_sigterm(tmp_path):
    """``hndsr up`` runs the supervised lifecycle of ``hndsr serve``: a killed stage stub is healed
    and the next request (the UI's client) succeeds; SIGTERM stops the UI, lets the request in
    flight finish, stops Triton and leaves no process and no shared-memory pool behind."""
    import threading
    import urllib.request

    from hndsr.serving.server import processes, stub_processes
    from hndsr_client.image_io import read_rgb

    from .conftest import FIXTURES, wait_until

    http, grpc, metrics, ui = free_port(), free_port(), free_port(), free_port()
    cli = Path(sys.executable).parent / "hndsr"
    args = ["up", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(
        [str(cli), *args, "--ui-port", str(ui)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HNDSR_WORK_DIR": str(tmp_path)},
    )
    lines: list[str] = []
    image = read_rgb(FIXTURES / "teak_0.png")[:64, :64]
    try:
        assert _read_until(proc, "UI on", lines, 300), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{ui}/", timeout=30) as page:
            assert page.status == 200
        (triton,) = [p.pid for p in processes(proc.pid) if p.argv and p.argv[0].endswith(b"tritonserver")]
        regions = {s.region for s in stub_processes(triton).values()}
        (unet,) = [s for s in stub_processes(triton).values() if s.model == "unet"]
        os.kill(unet.pid, signal.SIGKILL)
        assert _read_until(proc, "unet: healed", lines, 120), "".join(lines)
        assert not os.path.exists(unet.region), "the dead stub's shm pool is left while Triton runs on"
        live = {s.region for s in stub_processes(triton).values()}
        ours = {r for r in os.listdir("/dev/shm") if r.startswith("triton_python_backend_shm_region")}
        assert {f"/dev/shm/{r}" for r in ours} & regions <= live  # of this server's pools, only live ones
        regions |= live
        with HNDSRClient(f"127.0.0.1:{grpc}") as client:
            assert client.upscale(image, scale=4, steps=1).image.shape == (256, 256, 3)

        results: list = []

        def in_flight() -> None:
            with HNDSRClient(f"127.0.0.1:{grpc}") as client:
                results.append(client.upscale(image, scale=4, steps=8).image.shape)

        before = _unet_executions(metrics)
        worker = threading.Thread(target=in_flight)
        worker.start()
        assert wait_until(lambda: _unet_executions(metrics) > before, 60, interval=0.02)
        proc.send_signal(signal.SIGTERM)
        worker.join(120)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("hndsr up still running 120 s after SIGTERM:\n" + "".join(lines) + proc.communicate()[0])
        assert results == [(256, 256, 3)], "".join(lines) + out
        assert proc.returncode == 0, "".join(lines) + out
        assert "tritonserver stopped" in out
        assert mentioning(str(tmp_path)) == {}
        assert not [r for r in regions if os.path.exists(r)], regions
    finally:
        stop_for_good(proc, tmp_path)


def _unet_executions(metrics_port: int) -> int:
    """Triton's count of unet executions (it grows once a request is past admission, in the DDIM loop)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(
        int(float(ln.rsplit(" ", 1)[1]))
        for ln in text.splitlines()
        if ln.startswith("nv_inference_exec_count") and 'model="unet"' in ln
    )


def test_serve_checks_its_onnx_without_importing_torch():
    """``hndsr serve`` starts often (every container start, every heal test): the launcher and the
    ONNX freshness check stay torch-free (1.6 s of imports); only a stale repository exports."""
    code = (
        "import sys, hndsr.cli as cli, hndsr.serving.supervisor\n"
        "cli.ensure_exported()\n"
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
