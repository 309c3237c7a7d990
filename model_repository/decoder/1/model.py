"""CPU serving of this stage's ONNX (implementation: hndsr.serving.onnx_stage)."""

from hndsr.serving.onnx_stage import TritonPythonModel  # noqa: F401
