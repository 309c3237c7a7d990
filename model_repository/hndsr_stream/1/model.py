"""The HNDSR orchestrator (implementation: hndsr.serving.orchestrator)."""

from hndsr.serving.orchestrator import TritonPythonModel  # noqa: F401
