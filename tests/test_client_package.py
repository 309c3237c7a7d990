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
