"""The request's input arrays, typed as ``hndsr_client.interface`` declares them (numpy)."""

from __future__ import annotations

import numpy as np

from hndsr_client.interface import INPUTS, Tensor

_NUMPY = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "BYTES": np.object_}


def numpy_dtype(tensor: Tensor) -> type:
    return _NUMPY[tensor.datatype]


def request_arrays(
    image: np.ndarray, scale: float, steps: int, seed: int, eta: float, ensemble: int = 1
) -> dict[str, np.ndarray]:
    """The input tensors of one request, typed as the interface says."""
    values = {"IMAGE": image, "SCALE": [scale], "STEPS": [steps], "SEED": [seed], "ETA": [eta], "ENSEMBLE": [ensemble]}
    return {t.name: np.ascontiguousarray(np.asarray(values[t.name], dtype=numpy_dtype(t))) for t in INPUTS}
