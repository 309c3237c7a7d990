"""The HNDSR pipeline behind the hndsr/hndsr_stream front models (implementation: hndsr.serving.core)."""

from hndsr.serving.core import TritonPythonModel  # noqa: F401
