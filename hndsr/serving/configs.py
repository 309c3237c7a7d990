"""Generate ``config.pbtxt`` files: CPU (Python backend + onnxruntime) and GPU variants."""

from __future__ import annotations

from hndsr.config import LATENT_FACTOR, MIN_MODEL_SCALE, TILE, TILE_OVERLAP
from hndsr.inference.pipeline import Sampling
from hndsr.serving.admission import (
    CORE_INSTANCES,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_QUEUE_WAIT_S,
    DEFAULT_MAX_RUNNING,
    DEFAULT_STAGE_RETRY_S,
    FRONT_INSTANCES,
)
from hndsr.serving.stages import MAX_BATCH, STAGE_SPECS
from hndsr_client.interface import INPUTS, MAX_OUTPUT_PIXELS, OUTPUTS, STREAM_OUTPUTS, Tensor

TRT_OPT_BATCH = 64
CPU_CHUNK = 16
"""Tiles per onnxruntime run in a CPU stage, and per BLS stage call from the CPU core: 16 x 208^2
tiles keep a stage's shm pool near 5 MB."""
"""Batch size TensorRT optimises for (profile min 1, opt this, max ``MAX_BATCH`` tiles); the same
profile is used by the ONNX Runtime TensorRT accelerator and ``export/build_trt_plans.sh``."""
TRT_CACHE_DIR = "/tmp/hndsr_trt_cache"
"""Where the ONNX Runtime TensorRT accelerator keeps its engines and timing cache (a volume in
compose.yaml, an emptyDir in export/k8s)."""


def trt_profile(stage: str, batch: int) -> str:
    """TensorRT shape spec of one stage at one batch size: ``NAME:BxD1xD2,...``."""
    return ",".join(f"{s.name}:{'x'.join(map(str, (batch, *s.dims)))}" for s in STAGE_SPECS[stage].inputs)


def _warmup(stage: str) -> str:
    """A batch-1 zero-data warm-up: Triton runs it before the model is READY, so the TensorRT
    engine is built (or loaded) before the first request and readiness means "serves at speed"."""
    inputs = "".join(
        f'  inputs {{ key: "{s.name}" value {{ data_type: TYPE_FP32 dims: [ {", ".join(map(str, s.dims))} ] '
        "zero_data: true } }\n"
        for s in STAGE_SPECS[stage].inputs
    )
    return f'model_warmup [ {{\n  name: "batch1_zero"\n  batch_size: 1\n{inputs}}} ]\n'


def _tensors(kind: str, specs: tuple[Tensor, ...]) -> str:
    rows = [f"  {s.config_entry()}" for s in specs]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    def quoted(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"')

    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{quoted(v)}" }} }}\n' for k, v in params.items())


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
    # On CPU a request never waits for company (the cores are busy anyway); a GPU gains from
    # batching the tiles of concurrent requests.
    body += f"dynamic_batching {{ max_queue_delay_microseconds: {0 if variant == 'cpu' else 1000} }}\n"
    if variant == "cpu":
        body += _parameters({"chunk": str(CPU_CHUNK), "intra_op_threads": "0"})
    elif variant == "gpu":
        body += (
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
            '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            f'  parameters {{ key: "trt_engine_cache_path" value: "{TRT_CACHE_DIR}" }}\n'
            '  parameters { key: "trt_timing_cache_enable" value: "1" }\n'
            f'  parameters {{ key: "trt_timing_cache_path" value: "{TRT_CACHE_DIR}" }}\n'
            # One explicit profile covering every tile batch: without it the accelerator builds an
            # engine for the first batch size it sees and rebuilds (minutes) when a larger one comes.
            f'  parameters {{ key: "trt_profile_min_shapes" value: "{trt_profile(stage, 1)}" }}\n'
            f'  parameters {{ key: "trt_profile_opt_shapes" value: "{trt_profile(stage, TRT_OPT_BATCH)}" }}\n'
            f'  parameters {{ key: "trt_profile_max_shapes" value: "{trt_profile(stage, MAX_BATCH)}" }}\n'
            "} ] } }\n"
        )
    if variant in ("gpu", "trt"):
        body += _warmup(stage)
    return body


CONTROL = Tensor("CONTROL", "BYTES", (1,), "[1]", "hndsr_core only: JSON from the front (admission ticket, limits)")


def _io(inputs: tuple[Tensor, ...] = INPUTS, outputs: tuple[Tensor, ...] = OUTPUTS) -> str:
    """The front/core models' input and output blocks, from ``hndsr_client.interface``."""
    ins = [f"  {t.config_entry()}" for t in inputs]
    outs = [f"  {t.config_entry()}" for t in outputs]
    return "input [\n" + ",\n".join(ins) + "\n]\noutput [\n" + ",\n".join(outs) + "\n]\n"


def orchestrator_config(variant: str, model_version: str, stream: bool = False) -> str:
    """Config of the ``hndsr`` front model (Python backend, no torch: admission control, then BLS
    to ``hndsr_core``), or of its decoupled twin ``hndsr_stream`` that also streams PROGRESS."""
    kind = "KIND_CPU" if variant == "cpu" else "KIND_GPU"
    precision = {
        "cpu": "fp32 (onnxruntime CPU)",
        "gpu": "fp16 (ONNX Runtime TensorRT accelerator)",
        "trt": "fp16 (TensorRT plans, FNO spectral layers fp32)",
    }[variant]
    name = "hndsr_stream" if stream else "hndsr"
    policy = "model_transaction_policy { decoupled: true }\n" if stream else ""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        + _io(outputs=STREAM_OUTPUTS if stream else OUTPUTS)
        + policy
        # Admitted requests wait (queued or running) in front instances, and two more are always
        # free to refuse excess requests at once: Triton's own queue stays empty.
        + f"instance_group [ {{ count: {FRONT_INSTANCES} kind: {kind} }} ]\n"
        + _parameters(
            {
                "max_output_pixels": str(MAX_OUTPUT_PIXELS),
                "tile": str(TILE),
                "tile_overlap": str(TILE_OVERLAP),
                "latent_factor": str(LATENT_FACTOR),
                "min_model_scale": str(MIN_MODEL_SCALE),
                "model_version": model_version,
                "precision": precision,
                "max_inflight": str(DEFAULT_MAX_INFLIGHT),
                "max_running": str(DEFAULT_MAX_RUNNING),
                "front_instances": str(FRONT_INSTANCES),
                "core_instances": str(CORE_INSTANCES),
                "max_queue_wait_s": f"{DEFAULT_MAX_QUEUE_WAIT_S:g}",
                "stage_retry_s": f"{DEFAULT_STAGE_RETRY_S:g}",
            }
        )
    )


def core_config(variant: str, sampling: Sampling) -> str:
    """Config of ``hndsr_core``, the pipeline behind the front models: their inputs plus CONTROL
    (JSON from the front: admission ticket, limits), one instance per request allowed to run at
    once, and the sampling constants chosen with the weights (``Sampling`` as JSON). Decoupled:
    it streams PROGRESS to the front (decoupled BLS) before its final response."""
    kind = "KIND_CPU" if variant == "cpu" else "KIND_GPU"
    return (
        'name: "hndsr_core"\nbackend: "python"\nmax_batch_size: 0\n'
        + _io(inputs=(*INPUTS, CONTROL), outputs=STREAM_OUTPUTS)
        + "model_transaction_policy { decoupled: true }\n"
        + f"instance_group [ {{ count: {CORE_INSTANCES} kind: {kind} }} ]\n"
        + _parameters(
            {
                "stage_retry_s": f"{DEFAULT_STAGE_RETRY_S:g}",
                "sampling": sampling.to_json(),
                # Tiles per BLS stage call (hndsr/serving/bls.py): bounds the stubs' shm pools. The
                # GPU layouts send the TensorRT profile's optimal batch.
                "bls_chunk": str(CPU_CHUNK if variant == "cpu" else TRT_OPT_BATCH),
            }
        )
    )
