"""Shared fixtures: a small random HNDSR model and a real tritonserver for integration tests."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import torch

from hndsr.models.hndsr import HNDSR

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> dict:
    """A real tritonserver (nvidia-pytriton bundle, CPU) serving this repository on free ports."""
    from hndsr.cli import ensure_exported
    from hndsr.serving.server import ServerOptions, start_server, stop_server, wait_ready

    ensure_exported()
    work = tmp_path_factory.mktemp("triton")
    opts = ServerOptions(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=work)
    log = work / "tritonserver.log"
    proc: subprocess.Popen = start_server(opts, log)
    try:
        wait_ready(opts.host, opts.http_port, 300, proc)
    except Exception:
        stop_server(proc)
        print(log.read_text()[-5000:])
        raise
    yield {
        "grpc": f"{opts.host}:{opts.grpc_port}",
        "http": f"{opts.host}:{opts.http_port}",
        "metrics": f"http://{opts.host}:{opts.metrics_port}/metrics",
        "log": log,
        "proc": proc,
    }
    stop_server(proc)
