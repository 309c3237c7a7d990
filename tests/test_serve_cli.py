"""`hndsr serve` starts the real tritonserver, reports readiness, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import HNDSRClient

from .conftest import free_port

pytestmark = pytest.mark.integration


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
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "tritonserver stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
