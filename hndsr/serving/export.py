"""Build each stage's ONNX from the weights, check it against PyTorch, write the model repository.

    hndsr export [--weights weights/hndsr.safetensors] [--repo model_repository]

Writes ``<repo>/<stage>/1/model.onnx`` (opset 17, dynamic batch, fixed tile), the CPU
``config.pbtxt`` and the GPU variants ``configs/gpu.pbtxt`` / ``configs/trt.pbtxt``, and the
orchestrator's configs. Prints the max abs error of onnxruntime vs PyTorch per stage.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from hndsr.config import STAGES
from hndsr.inference.pipeline import Sampling
from hndsr.models.hndsr import HNDSR
from hndsr.paths import MODEL_REPOSITORY, WEIGHTS
from hndsr.serving.configs import core_config, orchestrator_config, stage_config
from hndsr.serving.freshness import stamp_path, weights_digest
from hndsr.serving.stages import STAGE_SPECS, example_inputs, stage_module

DEFAULT_WEIGHTS = WEIGHTS
DEFAULT_REPO = MODEL_REPOSITORY
OPSET = 17
PARITY_TOLERANCE = 1e-4


def export_stage(model: HNDSR, stage: str, path: Path) -> None:
    spec = STAGE_SPECS[stage]
    names_in = [s.name for s in spec.inputs]
    names_out = [s.name for s in spec.outputs]
    dynamic = {n: {0: "batch"} for n in names_in + names_out}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            stage_module(model, stage),
            example_inputs(stage, 2, torch.Generator().manual_seed(0)),
            str(path),
            opset_version=OPSET,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            dynamo=False,
        )


def parity(model: HNDSR, stage: str, path: Path, batch: int = 3) -> float:
    """Max abs error between onnxruntime and PyTorch on random inputs of another batch size."""
    inputs = example_inputs(stage, batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = stage_module(model, stage)(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {s.name: t.numpy() for s, t in zip(STAGE_SPECS[stage].inputs, inputs)}
    got = session.run([s.name for s in STAGE_SPECS[stage].outputs], feeds)
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


def _model_py(doc: str, module: str) -> str:
    """A model.py that imports the implementation from the installed ``hndsr`` package."""
    return f'"""{doc} (implementation: {module})."""\n\nfrom {module} import TritonPythonModel  # noqa: F401\n'


def write_configs(repo: Path, sampling: Sampling, version: str) -> None:
    for stage in STAGES:
        for sub in ("configs", "1"):
            (repo / stage / sub).mkdir(parents=True, exist_ok=True)
        (repo / stage / "config.pbtxt").write_text(stage_config(stage, "cpu"))
        (repo / stage / "configs" / "gpu.pbtxt").write_text(stage_config(stage, "gpu"))
        (repo / stage / "configs" / "trt.pbtxt").write_text(stage_config(stage, "trt"))
        (repo / stage / "1" / "model.py").write_text(
            _model_py("CPU serving of this stage's ONNX", "hndsr.serving.onnx_stage")
        )
    for name, stream in (("hndsr", False), ("hndsr_stream", True)):
        for sub in ("configs", "1"):
            (repo / name / sub).mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(orchestrator_config("cpu", version, stream))
        for variant in ("gpu", "trt"):
            (repo / name / "configs" / f"{variant}.pbtxt").write_text(orchestrator_config(variant, version, stream))
        (repo / name / "1" / "model.py").write_text(_model_py("The HNDSR orchestrator", "hndsr.serving.orchestrator"))
    core = repo / "hndsr_core"
    for sub in ("configs", "1"):
        (core / sub).mkdir(parents=True, exist_ok=True)
    (core / "config.pbtxt").write_text(core_config("cpu", sampling))
    for variant in ("gpu", "trt"):
        (core / "configs" / f"{variant}.pbtxt").write_text(core_config(variant, sampling))
    (core / "1" / "model.py").write_text(
        _model_py("The HNDSR pipeline behind the hndsr/hndsr_stream front models", "hndsr.serving.core")
    )


def export_all(weights: Path = DEFAULT_WEIGHTS, repo: Path = DEFAULT_REPO, verbose: bool = True) -> dict[str, float]:
    torch.manual_seed(0)
    model = HNDSR.load(weights)
    digest = weights_digest(weights)
    errors = {}
    for stage in STAGES:
        path = repo / stage / "1" / "model.onnx"
        export_stage(model, stage, path)
        errors[stage] = parity(model, stage, path)
        if verbose:
            print(f"{stage:8s} -> {path}  max|onnxruntime - torch| = {errors[stage]:.2e}")
        if errors[stage] > PARITY_TOLERANCE:
            raise RuntimeError(f"{stage}: ONNX parity error {errors[stage]:.2e} > {PARITY_TOLERANCE}")
        stamp_path(repo, stage).write_text(digest + "\n")
    write_configs(repo, Sampling.of(model), f"hndsr-{digest[:12]}")
    return errors
