"""Offline checks of what CI cannot run: the GPU configs, the TensorRT build script, compose.yaml,
Prometheus/Grafana and the Kubernetes manifests. The validators (check-jsonschema, docker-compose,
promtool, kubernetes-validate) must be installed (.ci/setup does it): a missing one fails a test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from hndsr.config import STAGES
from hndsr.inference.pipeline import Sampling
from hndsr.serving.configs import TRT_CACHE_DIR, TRT_OPT_BATCH, orchestrator_config, stage_config, trt_profile
from hndsr.serving.stages import MAX_BATCH, STAGE_SPECS

from .conftest import PRODUCTION_METRIC_FLAGS, ROOT

REPO = ROOT / "model_repository"
MODELS = [*STAGES, "hndsr", "hndsr_stream", "hndsr_core"]
EXPORT = ROOT / "export"
PROMETHEUS = EXPORT / "prometheus"
GRAFANA = EXPORT / "grafana"
K8S = EXPORT / "k8s"
JOB = "hndsr-triton"

# Keys the TensorRT accelerator of Triton 24.10's ONNX Runtime backend accepts; any other key fails
# the model load ("unknown parameter ... for TensorRT Execution Accelerator"). Source:
# triton-inference-server/onnxruntime_backend, branch r24.10, src/onnxruntime.cc.
ORT_TRT_PARAMETERS = {
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "int8_calibration_table_name", "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model",
    "trt_ep_context_file_path", "trt_ep_context_embed_mode",
}  # fmt: skip

# Metrics the dashboard and alerts may use although a CPU tritonserver never exports them. GPU-only:
# Triton's documented GPU metrics (DCGM, label gpu_uuid), from the "GPU Metrics" table of
# triton-inference-server/server docs/user_guide/metrics.md at r24.10 and core src/metrics.cc.
# Prometheus-made: `up`, which Prometheus attaches to every scrape target.
TRITON_DOCUMENTED_GPU_METRICS = {
    "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption", "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
}  # fmt: skip
GPU_ONLY_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes"}
PROMETHEUS_METRICS = {"up"}
# Labels Prometheus or Kubernetes service discovery attach; not on Triton's /metrics.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint"}


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def tool(name: str) -> str:
    """Path of a validator; the test fails (never skips) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is required (installed by .ci/setup)")
    return path


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd[:3])}...\n{result.stdout}\n{result.stderr}"
    return result


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def launched(command: list[str], monkeypatch: pytest.MonkeyPatch, layout: str = "gpu"):
    """What a container's ``hndsr serve ...`` command really starts, parsed by the real CLI:
    (tritonserver command line, supervisor options)."""
    from typer.testing import CliRunner

    import hndsr.serving.supervisor as supervisor
    from hndsr.cli import app
    from hndsr.serving.server import server_command

    assert command[:2] == ["hndsr", "serve"], "the launcher runs the container (watchdog + draining shutdown)"
    seen = {}
    monkeypatch.setattr(supervisor, "serve_forever", lambda opts, sup: seen.update(opts=opts, sup=sup) or 0)
    args = [a.replace("${HNDSR_LAYOUT:-gpu}", layout) for a in command[1:]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return server_command(seen["opts"], None), seen["sup"]


def flag_values(command: list[str], flag: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in command if arg.startswith(flag + "=")]


# ---------------------------------------------------------------------------------------------
# PromQL: the metric selectors of an expression (for the name and label checks against /metrics)

_TOKEN = re.compile(
    r"""(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<braces>\{[^}]*\})
    |(?P<range>\[[^\]]*\])
    |(?P<duration>\d+(?:ms|[smhdwy])\b)
    |(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<ident>[a-zA-Z_:][\w:]*)
    |(?P<other>\S)""",
    re.X,
)
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                 "quantile", "limitk", "limit_ratio"}  # fmt: skip


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value)]) for every vector selector in a PromQL expression."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    out, i = [], 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in _GROUPING:
            if nxt[1] == "(":  # skip the label list
                while i < len(tokens) and tokens[i][1] != ")":
                    i += 1
        elif kind == "ident" and text not in _KEYWORDS | _AGGREGATIONS and nxt[1] != "(":
            matchers = _MATCHER.findall(nxt[1]) if nxt[0] == "braces" else []
            out.append((text, matchers))
        i += 1
    return out


def test_promql_selector_extraction():
    expr = (
        'label_replace(sum by (model) (rate(a_total{job="j", model=~"x|y"}[5m])) / ignoring(model) group_left '
        'max(b{q="0.99"} offset 1m) > 3e6 and on (instance) up == 0, "m", "FNO", "model", "prior")'
    )
    assert selectors(expr) == [
        ("a_total", [("job", "=", "j"), ("model", "=~", "x|y")]),
        ("b", [("q", "=", "0.99")]),
        ("up", []),
    ]


# ---------------------------------------------------------------------------------------------
# Triton model configurations


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["config.pbtxt", "configs/gpu.pbtxt", "configs/trt.pbtxt"])
def test_committed_configs_parse_as_triton_model_config(model, variant):
    config = parse((REPO / model / variant).read_text())
    assert config.name == model
    if variant != "config.pbtxt":
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_committed_model_repository_is_what_export_generates(tmp_path):
    """Every config and model.py in model_repository/ is what ``hndsr export`` writes today, so a
    change to the generating code without a re-export fails here."""
    from hndsr.models.hndsr import HNDSR
    from hndsr.serving.export import write_configs

    model = HNDSR.load(ROOT / "weights" / "hndsr.safetensors")
    stamp = (REPO / "encoder" / "1" / "model.onnx.sha256").read_text().strip()
    write_configs(tmp_path, Sampling.of(model), f"hndsr-{stamp[:12]}")
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert {p.parts[0] for p in generated} == set(MODELS)
    for rel in generated:
        assert (REPO / rel).read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: run hndsr export"


@pytest.mark.parametrize("stage", STAGES)
def test_committed_stage_configs_are_the_generated_ones(stage):
    assert (REPO / stage / "config.pbtxt").read_text() == stage_config(stage, "cpu")
    for variant in ("gpu", "trt"):
        assert (REPO / stage / "configs" / f"{variant}.pbtxt").read_text() == stage_config(stage, variant), (
            f"{stage}/configs/{variant}.pbtxt is stale: run hndsr export"
        )


@pytest.mark.parametrize("stage", STAGES)
def test_gpu_stage_config_uses_tensorrt_fp16(stage):
    gpu = parse(stage_config(stage, "gpu"))
    assert gpu.platform == "onnxruntime_onnx"
    accel = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert set(accel.parameters) <= ORT_TRT_PARAMETERS, "Triton 24.10 rejects unknown accelerator parameters"
    # One optimisation profile covering every tile batch the orchestrator sends (1..MAX_BATCH).
    assert accel.parameters["trt_profile_min_shapes"] == trt_profile(stage, 1)
    assert accel.parameters["trt_profile_opt_shapes"] == trt_profile(stage, TRT_OPT_BATCH)
    assert accel.parameters["trt_profile_max_shapes"] == trt_profile(stage, MAX_BATCH)
    assert f"{STAGE_SPECS[stage].inputs[0].name}:{MAX_BATCH}x" in trt_profile(stage, MAX_BATCH)
    assert accel.parameters["trt_engine_cache_path"] == TRT_CACHE_DIR
    trt = parse(stage_config(stage, "trt"))
    assert trt.platform == "tensorrt_plan" and trt.default_model_filename == "model.plan"
    cpu = parse(stage_config(stage, "cpu"))
    for config in (gpu, trt, cpu):  # one interface for every variant
        assert [(i.name, list(i.dims)) for i in config.input] == [
            (s.name, list(s.dims)) for s in STAGE_SPECS[stage].inputs
        ]
    for config in (gpu, trt):  # warm-up builds/loads the engine before the model is READY
        (warmup,) = config.model_warmup
        assert {k: list(v.dims) for k, v in warmup.inputs.items()} == {
            s.name: list(s.dims) for s in STAGE_SPECS[stage].inputs
        }


def test_stream_config_is_decoupled():
    assert parse(orchestrator_config("gpu", "v", stream=True)).model_transaction_policy.decoupled
    assert not parse(orchestrator_config("gpu", "v")).model_transaction_policy.decoupled


# ---------------------------------------------------------------------------------------------
# TensorRT plans

SCRIPT = EXPORT / "build_trt_plans.sh"
FAKE_TRTEXEC = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.log"
[ "$1" = --help ] && echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec --help" && exit 0
for a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done
"""


def test_trt_build_script_matches_stage_shapes():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    builds = {m.group(1): m.group(2).split() for m in re.finditer(r"^build (\w+) (.+)$", text, re.M)}
    assert set(builds) == set(STAGES)
    for stage, specs in builds.items():
        expected = [f"{s.name}:{'x'.join(map(str, s.dims))}" for s in STAGE_SPECS[stage].inputs]
        assert specs == expected
    assert f"OPT=${{OPT_BATCH:-{TRT_OPT_BATCH}}}" in text and f"MAX=${{MAX_BATCH:-{MAX_BATCH}}}" in text
    assert re.search(r'^STAGES="(.+)"$', text, re.M).group(1).split() == list(STAGES)
    assert re.search(r'^ORCHESTRATORS="(.+)"$', text, re.M).group(1).split() == MODELS[len(STAGES) :]


def test_trt_build_script_assembles_a_servable_layout(tmp_path):
    """The whole script with a fake trtexec: layout, profiles, FP32 spectral layers, idempotence."""
    trtexec = tmp_path / "bin" / "trtexec"
    trtexec.parent.mkdir()
    trtexec.write_text(FAKE_TRTEXEC)
    trtexec.chmod(0o755)
    out = tmp_path / "trt_repository"
    env = {**os.environ, "TRTEXEC": str(trtexec), "SKIP_GPU_CHECK": "1", "PYTHON": sys.executable}

    first = run(["bash", str(SCRIPT), str(REPO), str(out)], env=env).stdout
    calls = [c for c in (tmp_path / "bin" / "calls.log").read_text().splitlines() if c != "--help"]
    assert len(calls) == len(STAGES) and first.count("building") == len(STAGES)
    for stage, call in zip(STAGES, calls):
        args = call.split()
        assert f"--onnx={REPO / stage / '1' / 'model.onnx'}" in args and "--fp16" in args
        for flag, batch in (("--minShapes", 1), ("--optShapes", TRT_OPT_BATCH), ("--maxShapes", MAX_BATCH)):
            assert flag_values(args, flag) == [trt_profile(stage, batch)]
        precisions = flag_values(args, "--layerPrecisions")
        if stage == "prior":  # the FNO's spectral products stay FP32, nothing else is constrained
            assert "--precisionConstraints=obey" in args
            names = [spec.rsplit(":", 1)[0] for spec in precisions[0].split(",")]
            assert all("/spectral/" in n for n in names) and any(n.endswith("/MatMul") for n in names)
            assert {spec.rsplit(":", 1)[1] for spec in precisions[0].split(",")} == {"fp32"}
            assert flag_values(args, "--layerOutputTypes") == precisions
        else:
            assert precisions == []
    for model in MODELS:
        config = parse((out / model / "config.pbtxt").read_text())
        assert (out / model / "configs" / "trt.pbtxt").read_text() == (
            REPO / model / "configs" / "trt.pbtxt"
        ).read_text()
        if model in STAGES:
            assert config.platform == "tensorrt_plan" and (out / model / "1" / "model.plan").read_text() == "plan\n"
            assert not (out / model / "1" / "model.onnx").exists()
        else:
            assert config.backend == "python" and (out / model / "1" / "model.py").exists()
    assert "tensorrt=TensorRT v100500" in (out / "BUILD_INFO").read_text()

    second = run(["bash", str(SCRIPT), str(REPO), str(out)], env=env).stdout
    assert second.count("skipped") == len(STAGES) and "building" not in second

    fp16 = run(["bash", str(SCRIPT), str(REPO), str(out)], env={**env, "FNO_SPECTRAL_PRECISION": "fp16"}).stdout
    assert "prior: building" in fp16 and fp16.count("building") == 1  # the stamp records the precision
    last = (tmp_path / "bin" / "calls.log").read_text().splitlines()[-1]
    assert "--layerPrecisions" not in last

    no_trtexec = subprocess.run(
        ["bash", str(SCRIPT), str(REPO), str(out)], env={**env, "TRTEXEC": str(tmp_path / "nope")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert no_trtexec.returncode != 0 and "no trtexec" in no_trtexec.stderr


# ---------------------------------------------------------------------------------------------
# compose.yaml


def test_compose_file(monkeypatch):
    spec = compose()
    services = spec["services"]
    assert all(s.get("profiles") for s in services.values()), "every service needs a profile (gpu/cpu/trt-build)"
    gpu, cpu, trt_build = services["triton"], services["triton-cpu"], services["trt-build"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    for name in ("ui", "prometheus", "grafana"):
        assert set(services[name]["profiles"]) == {"gpu", "cpu"}

    for triton in (gpu, cpu):
        assert triton["build"]["dockerfile"] == "export/Dockerfile.triton"
        assert {"8000:8000", "8001:8001", "8002:8002"} <= set(triton["ports"])
        size = triton["shm_size"]
        assert size.endswith("gb") and int(size[:-2]) >= 1, "Docker's 64 MB /dev/shm is too small"
        assert triton["ulimits"] == {"memlock": -1, "stack": 67108864}
        assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
        command, sup = launched(triton["command"], monkeypatch)
        assert command[0] == "/opt/tritonserver/bin/tritonserver"  # the official image's, with its backends
        assert flag_values(command, "--http-address") == ["0.0.0.0"]
        exit_timeout = int(flag_values(command, "--exit-timeout-secs")[0])
        assert int(triton["stop_grace_period"].rstrip("s")) > sup.drain_grace_s + exit_timeout
        assert flag_values(command, "--metrics-config") == ["summary_latencies=true"]
        repos = [v for v in triton["volumes"] if v.startswith("./model_repository:")]
        assert repos and all(v.endswith(":ro") for v in repos), "the model repository is mounted read-only"
    gpu_cmd, cpu_cmd = launched(gpu["command"], monkeypatch)[0], launched(cpu["command"], monkeypatch)[0]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in cpu and flag_values(cpu_cmd, "--allow-gpu-metrics") == ["false"]
    assert flag_values(gpu_cmd, "--allow-gpu-metrics") == ["true"]
    assert cpu["networks"]["default"]["aliases"] == ["triton"]
    assert flag_values(cpu_cmd, "--model-config-name") == []  # config.pbtxt = the CPU layout
    # Same flags on both variants apart from the repository, layout and GPU metrics.
    differ = ("--model-repository", "--model-config-name", "--allow-gpu-metrics")
    assert [a for a in gpu_cmd if not a.startswith(differ)] == [a for a in cpu_cmd if not a.startswith(differ)]

    # Layouts: gpu = the committed ONNX repository, trt = the volume trt-build fills on the GPU.
    assert flag_values(gpu_cmd, "--model-repository") == ["/opt/hndsr/layouts/gpu"]
    assert flag_values(gpu_cmd, "--model-config-name") == ["gpu"]
    trt_cmd = launched(gpu["command"], monkeypatch, layout="trt")[0]
    assert flag_values(trt_cmd, "--model-repository") == ["/opt/hndsr/layouts/trt"]
    assert flag_values(trt_cmd, "--model-config-name") == ["trt"]
    assert "./model_repository:/opt/hndsr/layouts/gpu:ro" in gpu["volumes"]
    assert "trt-repository:/opt/hndsr/layouts/trt:ro" in gpu["volumes"]
    assert "trt-repository:/opt/hndsr/layouts/trt" in trt_build["volumes"]
    assert trt_build["command"][-2:] == ["/opt/hndsr/model_repository", "/opt/hndsr/layouts/trt"]
    assert "./model_repository:/opt/hndsr/model_repository:ro" in trt_build["volumes"]
    assert trt_build["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert f"trt-cache:{TRT_CACHE_DIR}" in gpu["volumes"]

    ui = services["ui"]["command"]
    assert "--grpc=triton:8001" in ui and "--metrics=http://triton:8002/metrics" in ui
    prom = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == JOB]
    assert job["static_configs"][0]["targets"] == ["triton:8002"]

    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
        if "build" in service:
            dockerfile = ROOT / service["build"]["dockerfile"]
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY ") and "--from" not in line:
                    for src in line.split()[1:-1]:
                        assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    grafana = services["grafana"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hndsr.yaml").read_text())
    assert f"./export/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana["volumes"]
    assert "./export/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_compose_validates_against_the_compose_spec():
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "compose.yaml")])
    for profile in ("gpu", "cpu"):
        run([tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "--profile", profile, "config", "--quiet"])


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana


def test_promtool_checks_config_and_rules():
    promtool = tool("promtool")
    run([promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")])
    run([promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")])


def _alerts() -> dict:
    return yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())


T = f'job="{JOB}", instance="triton:8002"'
TARGET = {"job": JOB, "instance": "triton:8002"}
SUCCESS = "nv_inference_request_success"
SIX = ("hndsr", "hndsr_stream", "encoder", "prior", "unet", "decoder")
# (alert, input series, evaluation time, labels of the expected alerts beyond alertname/severity)
ALERT_CASES = [
    ("HNDSRTritonDown", {f"up{{{T}}}": "0x20"}, "6m", [TARGET]),
    ("HNDSRTritonDown", {f"up{{{T}}}": "1x20"}, "6m", []),
    ("HNDSRModelNotReady", {f"up{{{T}}}": "1x20", **{f'{SUCCESS}{{{T}, model="{m}"}}': "0x20" for m in SIX[:-1]}},
     "11m", [{"instance": "triton:8002"}]),
    ("HNDSRModelNotReady", {f"up{{{T}}}": "1x20", **{f'{SUCCESS}{{{T}, model="{m}"}}': "0x20" for m in SIX}},
     "11m", []),
    ("HNDSRStageRestarted", {f'nv_inference_exec_count{{{T}, model="unet"}}': "0+5x10 0+5x10"}, "15m",
     [{"instance": "triton:8002", "model": "unet"}]),
    ("HNDSRStageRestarted", {f'nv_inference_exec_count{{{T}, model="unet"}}': "0+5x20"}, "15m", []),
    ("HNDSRLatencyP99High", {f'nv_inference_request_summary_us{{{T}, model="hndsr", quantile="0.99"}}': "40000000x20"},
     "11m", [{"instance": "triton:8002", "model": "hndsr"}]),
    ("HNDSRLatencyP99High", {f'nv_inference_request_summary_us{{{T}, model="hndsr", quantile="0.99"}}': "2000000x20"},
     "11m", []),
    ("HNDSRRequestErrorRateHigh", {f'hndsr_requests_total{{{T}, outcome="error"}}': "0+1x30",
                                   f'hndsr_requests_total{{{T}, outcome="success"}}': "0+9x30"}, "15m",
     [{"instance": "triton:8002"}]),
    ("HNDSRRequestErrorRateHigh", {f'hndsr_requests_total{{{T}, outcome="error"}}': "0x30",
                                   f'hndsr_requests_total{{{T}, outcome="invalid"}}': "0+5x30",
                                   f'hndsr_requests_total{{{T}, outcome="success"}}': "0+9x30"}, "15m", []),
    ("HNDSRTritonFailures", {f'nv_inference_request_failure{{{T}, model="unet", reason="BACKEND"}}': "0+1x30",
                             f'{SUCCESS}{{{T}, model="unet"}}': "0+9x30"}, "15m",
     [{"instance": "triton:8002", "model": "unet"}]),
    ("HNDSRTritonFailures", {f'nv_inference_request_failure{{{T}, model="hndsr", reason="CANCELED"}}': "0+5x30",
                             f'{SUCCESS}{{{T}, model="hndsr"}}': "0+5x30"}, "15m", []),
    ("HNDSRQueueSaturated", {f'nv_inference_queue_duration_us{{{T}, model="hndsr"}}': "0+600x30",
                             f'nv_inference_request_duration_us{{{T}, model="hndsr"}}': "0+1000x30"}, "20m",
     [{"instance": "triton:8002", "model": "hndsr"}]),
    ("HNDSRQueueSaturated", {f'nv_inference_queue_duration_us{{{T}, model="hndsr"}}': "0+100x30",
                             f'nv_inference_request_duration_us{{{T}, model="hndsr"}}': "0+1000x30"}, "20m", []),
    ("HNDSRPendingRequestsHigh", {f'nv_inference_pending_request_count{{{T}, model="hndsr"}}': "10x20"}, "6m",
     [{"instance": "triton:8002"}]),
    ("HNDSRPendingRequestsHigh", {f'nv_inference_pending_request_count{{{T}, model="unet"}}': "3x20"}, "6m", []),
    ("HNDSROverloaded", {f'hndsr_requests_total{{{T}, outcome="overloaded"}}': "0+1x30",
                         f'hndsr_requests_total{{{T}, outcome="success"}}': "0+20x30"}, "15m",
     [{"instance": "triton:8002"}]),
    ("HNDSROverloaded", {f'hndsr_requests_total{{{T}, outcome="overloaded"}}': "0x30",
                         f'hndsr_requests_total{{{T}, outcome="invalid"}}': "0+5x30",
                         f'hndsr_requests_total{{{T}, outcome="success"}}': "0+20x30"}, "15m", []),
    ("HNDSRAdmissionWaitHigh", {f"hndsr_queue_wait_ms_total{{{T}}}": "0+400000x30",
                                f'hndsr_requests_total{{{T}, outcome="success"}}': "0+10x30"}, "15m",
     [{"instance": "triton:8002"}]),
    ("HNDSRAdmissionWaitHigh", {f"hndsr_queue_wait_ms_total{{{T}}}": "0+1000x30",
                                f'hndsr_requests_total{{{T}, outcome="success"}}': "0+10x30"}, "15m", []),
    ("HNDSRGPUMemoryNearFull", {f'nv_gpu_memory_used_bytes{{{T}, gpu_uuid="GPU-0"}}': "95x20",
                                f'nv_gpu_memory_total_bytes{{{T}, gpu_uuid="GPU-0"}}': "100x20"}, "11m",
     [{"instance": "triton:8002", "gpu_uuid": "GPU-0"}]),
    ("HNDSRGPUMemoryNearFull", {f'nv_gpu_memory_used_bytes{{{T}, gpu_uuid="GPU-0"}}': "50x20",
                                f'nv_gpu_memory_total_bytes{{{T}, gpu_uuid="GPU-0"}}': "100x20"}, "11m", []),
    ("HNDSRGPUUtilizationPinned", {f'nv_gpu_utilization{{{T}, gpu_uuid="GPU-0"}}': "0.99x40"}, "25m",
     [{**TARGET, "gpu_uuid": "GPU-0"}]),
    ("HNDSRGPUUtilizationPinned", {f'nv_gpu_utilization{{{T}, gpu_uuid="GPU-0"}}': "0.6x40"}, "25m", []),
    ("HNDSRNoSuccessfulRequests", {f'hndsr_requests_total{{{T}, outcome="success"}}': "5x40",
                                   f'hndsr_requests_total{{{T}, outcome="error"}}': "0+1x40"}, "20m",
     [{"instance": "triton:8002"}]),
    ("HNDSRNoSuccessfulRequests", {f'hndsr_requests_total{{{T}, outcome="success"}}': "5x40",
                                   f'nv_inference_pending_request_count{{{T}, model="hndsr"}}': "3x40"}, "20m",
     [{"instance": "triton:8002"}]),
    ("HNDSRNoSuccessfulRequests", {f'hndsr_requests_total{{{T}, outcome="success"}}': "5x40",
                                   f'hndsr_requests_total{{{T}, outcome="error"}}': "0x40"}, "20m", []),  # idle
]  # fmt: skip


def test_alert_rules_fire_as_intended(tmp_path):
    """promtool unit tests: each alert fires on the symptom it describes and stays quiet otherwise."""
    alerts = _alerts()
    severity = {}
    for group in alerts["groups"]:
        for rule in group["rules"]:
            severity[rule["alert"]] = rule["labels"]["severity"]
            rule.pop("annotations")  # promtool compares annotations verbatim; labels are what matter
    assert {case[0] for case in ALERT_CASES} == set(severity), "every alert needs a firing and a quiet case"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(alerts))
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [
                {
                    "eval_time": at,
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": {**labels, "severity": severity[alert]}} for labels in expected],
                }
            ],
        }
        for alert, series, at, expected in ALERT_CASES
    ]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "tests": tests}))
    run([tool("promtool"), "test", "rules", str(tmp_path / "tests.yml")])


def _dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "hndsr.json").read_text())


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$instance", ".*")


def _adapter_rules() -> list[dict]:
    config = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    return yaml.safe_load(config["data"]["config.yaml"])["rules"]


def _adapter_to_promql(query: str) -> str:
    return query.replace("<<.LabelMatchers>>", 'namespace="hndsr", pod="p"').replace("<<.GroupBy>>", "pod")


def monitoring_queries() -> dict[str, str]:
    """Every PromQL expression of the alerts, the dashboard and the adapter rules, by origin."""
    queries = {}
    for group in _alerts()["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule['alert']}"] = rule["expr"]
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = _grafana_to_promql(target["expr"])
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<selector>, label): check the selector
            queries[f"variable {variable['name']}"] = re.fullmatch(
                r"label_values\((.*), \w+\)", variable["definition"]
            )[1]
    for i, rule in enumerate(_adapter_rules()):
        queries[f"adapter rule {i} series"] = rule["seriesQuery"]
        queries[f"adapter rule {i} metrics"] = _adapter_to_promql(rule["metricsQuery"])
    return queries


def test_dashboard_and_adapter_queries_are_valid_promql(tmp_path):
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] == "HNDSR on Triton"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"] and all(
                t["expr"] and t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]
            )
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] and source["url"] == "http://prometheus:9090"
    # What the issue asks the dashboard to show.
    text = json.dumps(dashboard)
    for needle in ("nv_inference_request_failure", "reason", "nv_inference_request_summary_us", "quantile",
                   "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us", 'model=\\"unet\\"',
                   "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_gpu_utilization",
                   "nv_gpu_memory_used_bytes", "hndsr_requests_total", "hndsr_tiles_total", "hndsr_ddim_steps_total",
                   "hndsr_stage_duration_ms_total", "prior (FNO)"):  # fmt: skip
        assert needle in text, needle
    # Every expression parses as PromQL: promtool checks them as recording rules.
    queries = monitoring_queries()
    rules = [{"record": f"hndsr_check:q{i}", "expr": q} for i, q in enumerate(queries.values())]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    run([tool("promtool"), "check", "rules", str(tmp_path / "queries.yml")])


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def _find(docs: dict[str, list[dict]], kind: str, name: str) -> dict:
    (doc,) = [d for ds in docs.values() for d in ds if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


CRDS = {"ServiceMonitor", "PrometheusRule", "Kustomization"}


@pytest.mark.parametrize("version", ["1.27.0", "latest"])
def test_kubernetes_manifests_validate_offline(version):
    kubernetes_validate = _kubernetes_validate()
    version = kubernetes_validate.latest_version() if version == "latest" else version
    checked = set()
    for name, docs in _k8s_docs().items():
        for doc in docs:
            if doc["kind"] in CRDS:
                continue  # no schema offline; checked structurally in test_kubernetes_manifests_fit_together
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc}")
            checked.add(doc["kind"])
    assert checked == {
        "Namespace",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
    }


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is required (pip install -e '.[dev]')")
    return kubernetes_validate


def test_kubernetes_manifests_fit_together(monkeypatch):
    docs = _k8s_docs()
    kustomization = docs.pop("kustomization.yaml")[0]
    assert set(kustomization["resources"]) <= set(docs)
    assert set(docs) - set(kustomization["resources"]) == {"prometheus-adapter-rules.yaml"}

    deployment = _find(docs, "Deployment", "hndsr-triton")
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = pod["containers"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert "command" not in triton, "args only: keep the image's NVIDIA entrypoint"
    args, sup = launched(triton["args"], monkeypatch)
    exit_timeout = int(flag_values(args, "--exit-timeout-secs")[0])
    pre_stop = int(triton["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + sup.drain_grace_s + exit_timeout
    shm = [v for v in pod["volumes"] if v["name"] == "dshm"][0]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    assert {"name": "trt-cache", "mountPath": TRT_CACHE_DIR} in triton["volumeMounts"]
    # Same server flags as the compose GPU service, with the image's baked-in repository.
    gpu_compose = launched(compose()["services"]["triton"]["command"], monkeypatch)[0]
    differ = ("--model-repository", "--model-config-name")
    assert [a for a in args if not a.startswith(differ)] == [a for a in gpu_compose if not a.startswith(differ)]
    assert flag_values(args, "--model-repository") == ["/opt/hndsr/model_repository"]
    assert flag_values(args, "--model-config-name") == ["gpu"]

    service = _find(docs, "Service", "hndsr-triton")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc", "metrics"}
    headless = _find(docs, "Service", "hndsr-triton-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"].items() <= labels.items()
    pdb = _find(docs, "PodDisruptionBudget", "hndsr-triton")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    monitor = _find(docs, "ServiceMonitor", "hndsr-triton")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    selected = [
        d for ds in docs.values() for d in ds if d["kind"] == "Service" and wanted <= d["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["hndsr-triton"], "scrape each pod once, as job hndsr-triton"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    rules = _find(docs, "PrometheusRule", "hndsr-triton")
    assert rules["spec"]["groups"] == _alerts()["groups"], "prometheus-rules.yaml must carry alerts.yml's groups"

    hpa = _find(docs, "HorizontalPodAutoscaler", "hndsr-triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hndsr-triton"}
    served = {rule["name"]["as"] for rule in _adapter_rules()}
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} == served
    ui = _find(docs, "Deployment", "hndsr-ui")["spec"]["template"]["spec"]["containers"][0]
    assert "--grpc=hndsr-triton:8001" in ui["args"]


# ---------------------------------------------------------------------------------------------
# Every metric the dashboard, the alerts and the HPA use exists on this repository's live Triton


def _metrics_flags() -> list[str]:
    """The production metric flags (compose's CPU service: the same as the GPU one and the k8s args)."""
    extra = flag_values(compose()["services"]["triton-cpu"]["command"], "--triton-arg")
    flags = [a for a in extra if a.startswith("--metrics-config")]
    assert flags, "compose's Triton runs without --metrics-config"
    return flags


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def live_series(text: str) -> dict[str, list[dict[str, str]]]:
    """Metric name -> label sets, from the Prometheus text format (summaries: the base name too)."""
    series: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            series.setdefault(match[1], []).append(dict(_LABEL.findall(match[2] or "")))
    return series


@pytest.mark.integration
def test_health_checks_pass_on_a_ready_triton(triton):
    """compose's health check command and the Kubernetes probes' endpoints, against a live server."""
    (check,) = [a for a in compose()["services"]["triton"]["healthcheck"]["test"] if "urlopen" in a]
    run([sys.executable, "-c", check.replace("localhost:8000", triton["http"])])
    pod = _find(_k8s_docs(), "Deployment", "hndsr-triton")["spec"]["template"]["spec"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = pod["containers"][0][probe]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://{triton['http']}{path}", timeout=10) as resp:
            assert resp.status == 200, probe


@pytest.mark.integration
def test_monitoring_metrics_exist_on_live_triton(triton):
    """The shared server runs with compose's metric flags; every series the monitoring reads exists."""
    assert _metrics_flags() == list(PRODUCTION_METRIC_FLAGS)
    with urllib.request.urlopen(triton["metrics"], timeout=30) as resp:
        live = live_series(resp.read().decode())
    assert GPU_ONLY_METRICS <= TRITON_DOCUMENTED_GPU_METRICS
    assert not GPU_ONLY_METRICS & set(live), "a metric on the CPU server needs no GPU-only exemption"
    missing, bad_labels, used = [], [], set()
    for origin, expr in monitoring_queries().items():
        found = selectors(expr)
        assert found, f"{origin}: no metric found in {expr!r}"
        for name, matchers in found:
            used.add(name)
            if name in GPU_ONLY_METRICS | PROMETHEUS_METRICS:
                continue
            if name not in live:
                missing.append(f"{origin}: {name}")
                continue
            for label, op, value in matchers:
                if label in TARGET_LABELS or op not in ("=", "=~") or "$" in value:
                    continue
                values = {s.get(label) for s in live[name]} - {None}
                wanted = value.split("|") if op == "=~" and re.fullmatch(r"[\w.|]+", value) else [value]
                for want in wanted:
                    if not any(re.fullmatch(want if op == "=~" else re.escape(want), v) for v in values):
                        bad_labels.append(f"{origin}: {name}{{{label}{op}{want!r}}} not in {sorted(values)}")
    assert not missing, "metrics absent from the live /metrics:\n" + "\n".join(missing)
    assert not bad_labels, "label values absent from the live /metrics:\n" + "\n".join(bad_labels)
    # The issue's list, all in use.
    assert {"hndsr_requests_total", "hndsr_tiles_total", "hndsr_ddim_steps_total", "hndsr_stage_duration_ms_total",
            "nv_inference_request_summary_us", "nv_inference_queue_duration_us", "nv_inference_pending_request_count",
            "nv_inference_compute_infer_duration_us", "nv_inference_count", "nv_inference_exec_count",
            "nv_gpu_utilization", "nv_gpu_memory_used_bytes"} <= used  # fmt: skip
