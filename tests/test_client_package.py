"""The thin client is its own distribution: no torch, no server code, and it works on its own."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tomllib
from PIL import Image

from .conftest import ROOT

# Run the client with the server-side packages made unimportable, as on a laptop with only
# `pip install ./client`.
_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "hndsr", "hndsr_ui", "gradio", "onnxruntime", "pytriton"}:
            raise ImportError(f"{name} is not part of the client distribution")
sys.meta_path.insert(0, Block())
sys.argv = ["hndsr-client", *sys.argv[1:]]
from hndsr_client.cli import main
main()
"""


def test_client_distribution_declares_no_server_dependency():
    meta = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    names = {d.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for d in meta["dependencies"]}
    assert not names & {"torch", "onnxruntime", "nvidia-pytriton", "hndsr", "gradio"}
    assert not any("numpy" in d and "<2" in d for d in meta["dependencies"]), "numpy<2 is the server's constraint"
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert server["tool"]["setuptools"]["packages"]["find"]["include"] == ["hndsr*"], "no top-level client/ui/export"


@pytest.mark.integration
def test_client_upscales_without_server_packages(triton, tmp_path):
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(src)
    cmd = [sys.executable, "-c", _BLOCK, "upscale", str(src), str(dst), "--scale", "2", "--steps", "0"]
    proc = subprocess.run([*cmd, "--url", triton["grpc"]], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(dst).size == (64, 48)


def test_importing_the_client_package_or_the_server_loads_no_client_library():
    """``import hndsr_client`` and the server's modules load tritonclient/gRPC only when a client
    class is used (every core stub and training run imports ``hndsr_client.interface``)."""
    code = (
        "import sys, hndsr_client, hndsr_client.interface, hndsr.inference.pipeline, hndsr.training.trainer\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('tritonclient', 'grpc', 'gevent')]\n"
        "assert not loaded, loaded\n"
        "hndsr_client.HNDSRClient\n"
        "assert 'tritonclient.grpc' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


class _FlakyServer:
    """Stands in for the tritonclient client: fails the first ``failures`` calls with ``message``."""

    def __init__(self, failures: int, message: str, status: str = "StatusCode.INTERNAL") -> None:
        self.failures, self.message, self.status, self.calls = failures, message, status, 0

    def infer(self, *args, **kwargs):
        from tritonclient.utils import InferenceServerException

        self.calls += 1
        if self.calls <= self.failures:
            raise InferenceServerException(self.message, status=self.status)
        return self

    def as_numpy(self, name: str):
        return np.array([b'{"tiles": 1}'], dtype=object) if name == "INFO" else np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("message", "failures", "calls", "outcome"),
    [
        ("Stub process 'hndsr_0_0' is not healthy.", 2, 3, None),  # a front crashed with the request
        ("Request for unknown model: 'hndsr' has no available versions", 1, 2, None),  # reloading
        ("Stub process 'hndsr_0_0' is not healthy.", 9, 4, "ServerUnavailableError"),  # bounded: 1 + 3
        ("server overloaded, retry later", 1, 1, "OverloadedError"),  # refusals are never retried
        ("Server is shutting down: model 'hndsr' is not ready", 1, 1, "ServerUnavailableError"),  # draining
        ("SCALE must be in [2, 8], got 9", 1, 1, "InvalidInputError"),
    ],
)
def test_client_retries_only_requests_a_crashed_or_reloading_front_lost(monkeypatch, message, failures, calls, outcome):
    import hndsr_client.triton_client as tc

    monkeypatch.setattr(tc, "RETRY_BACKOFF_S", (0.0, 0.0, 0.0))
    client = tc.HNDSRClient("127.0.0.1:1")
    status = "StatusCode.UNAVAILABLE" if "unknown model" in message or "shutting" in message else "StatusCode.INTERNAL"
    server = _FlakyServer(failures, message, "StatusCode.INVALID_ARGUMENT" if "SCALE" in message else status)
    client._client = server
    if outcome is None:
        assert client.upscale(np.zeros((4, 4, 3), np.uint8)).info == {"tiles": 1}
    else:
        with pytest.raises(getattr(tc, outcome)):
            client.upscale(np.zeros((4, 4, 3), np.uint8))
    assert server.calls == calls
