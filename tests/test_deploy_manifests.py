"""Offline checks of what CI cannot run: the GPU configs, the TensorRT build script, compose.yaml."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from hndsr.models.hndsr import STAGES
from hndsr.pipeline import Sampling
from hndsr.serving.configs import orchestrator_config, stage_config
from hndsr.serving.stages import STAGE_SPECS

from .conftest import ROOT

REPO = ROOT / "model_repository"
MODELS = [*STAGES, "hndsr", "hndsr_stream"]


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["config.pbtxt", "configs/gpu.pbtxt", "configs/trt.pbtxt"])
def test_committed_configs_parse_as_triton_model_config(model, variant):
    config = parse((REPO / model / variant).read_text())
    assert config.name == model
    if variant != "config.pbtxt":
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


@pytest.mark.parametrize("stage", STAGES)
def test_gpu_stage_config_uses_tensorrt_fp16(stage):
    gpu = parse(stage_config(stage, "gpu"))
    assert gpu.platform == "onnxruntime_onnx"
    accel = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    trt = parse(stage_config(stage, "trt"))
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    cpu = parse(stage_config(stage, "cpu"))
    for config in (gpu, trt, cpu):  # one interface for every variant
        assert [(i.name, list(i.dims)) for i in config.input] == [
            (s.name, list(s.dims)) for s in STAGE_SPECS[stage].inputs
        ]


def test_stream_config_is_decoupled():
    sampling = Sampling(1.0, 150)
    assert parse(orchestrator_config("gpu", sampling, "v", stream=True)).model_transaction_policy.decoupled
    assert not parse(orchestrator_config("gpu", sampling, "v")).model_transaction_policy.decoupled


def test_trt_build_script_matches_stage_shapes():
    script = ROOT / "export" / "build_trt_plans.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    builds = {m.group(1): m.group(2).split() for m in re.finditer(r"^build (\w+) (.+)$", script.read_text(), re.M)}
    assert set(builds) == set(STAGES)
    for stage, specs in builds.items():
        expected = [f"{s.name}:{'x'.join(map(str, s.dims))}" for s in STAGE_SPECS[stage].inputs]
        assert specs == expected


def test_compose_file():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    triton = compose["services"]["triton"]
    assert "--model-config-name=gpu" in triton["command"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    ui = compose["services"]["ui"]
    assert ui["depends_on"]["triton"]["condition"] == "service_healthy"
    for service in compose["services"].values():
        dockerfile = ROOT / service["build"]["dockerfile"]
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose (Debian package) is needed to validate compose.yaml offline")
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
