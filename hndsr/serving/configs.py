"""Generate ``config.pbtxt`` files: CPU (Python backend + onnxruntime) and GPU variants."""

from __future__ import annotations

from hndsr.config import MAX_OUTPUT_PIXELS
from hndsr.pipeline import Sampling
from hndsr.serving.stages import MAX_BATCH, STAGE_SPECS, TensorSpec


def _tensors(kind: str, specs: tuple[TensorSpec, ...]) -> str:
    rows = [f'  {{ name: "{s.name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, s.dims))} ] }}' for s in specs]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())


def stage_config(stage: str, variant: str) -> str:
    """``variant``: "cpu" (Python backend running ONNX with onnxruntime), "gpu" (ONNX Runtime
    backend with the TensorRT FP16 accelerator) or "trt" (``tensorrt_plan`` built by trtexec)."""
    spec = STAGE_SPECS[stage]
    head = f'name: "{stage}"\n'
    if variant == "cpu":
        head += 'backend: "python"\n'
    elif variant == "gpu":
        head += 'platform: "onnxruntime_onnx"\n'
    elif variant == "trt":
        head += 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"\n'
    else:
        raise ValueError(f"unknown variant {variant!r}")
    body = head + f"max_batch_size: {MAX_BATCH}\n" + _tensors("input", spec.inputs) + _tensors("output", spec.outputs)
    kind = "KIND_CPU" if variant == "cpu" else "KIND_GPU"
    body += f"instance_group [ {{ count: 1 kind: {kind} }} ]\n"
    body += "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"
    if variant == "cpu":
        body += _parameters({"chunk": "16", "intra_op_threads": "0"})
    elif variant == "gpu":
        body += (
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
            '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            '  parameters { key: "trt_engine_cache_path" value: "/tmp/hndsr_trt_cache" }\n'
            "} ] } }\n"
        )
    return body


def orchestrator_config(variant: str, sampling: Sampling, model_version: str, stream: bool = False) -> str:
    """Config of the ``hndsr`` BLS model (Python backend on both variants), or of its decoupled
    twin ``hndsr_stream`` that also streams PROGRESS responses."""
    kind = "KIND_CPU" if variant == "cpu" else "KIND_GPU"
    precision = "fp32" if variant == "cpu" else "fp16 (TensorRT)"
    name = "hndsr_stream" if stream else "hndsr"
    progress = ',\n  { name: "PROGRESS" data_type: TYPE_INT32 dims: [ 2 ] }' if stream else ""
    policy = "model_transaction_policy { decoupled: true }\n" if stream else ""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        "input [\n"
        '  { name: "IMAGE" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] },\n'
        '  { name: "SCALE" data_type: TYPE_FP32 dims: [ 1 ] optional: true },\n'
        '  { name: "STEPS" data_type: TYPE_INT32 dims: [ 1 ] optional: true },\n'
        '  { name: "SEED" data_type: TYPE_INT64 dims: [ 1 ] optional: true },\n'
        '  { name: "ETA" data_type: TYPE_FP32 dims: [ 1 ] optional: true }\n'
        "]\n"
        "output [\n"
        '  { name: "SR_IMAGE" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] },\n'
        '  { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }'
        f"{progress}\n]\n"
        f"{policy}"
        f"instance_group [ {{ count: 2 kind: {kind} }} ]\n"
        + _parameters(
            {
                "residual_scale": f"{sampling.residual_scale:.8g}",
                "start_timestep": str(sampling.start_timestep),
                "max_output_pixels": str(MAX_OUTPUT_PIXELS),
                "model_version": model_version,
                "precision": precision,
            }
        )
    )
