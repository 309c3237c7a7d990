"""Triton Python-backend model that runs one stage's ONNX with onnxruntime (CPU serving).

The bundled tritonserver of ``nvidia-pytriton`` has no ONNX Runtime backend, so on CPU each
stage is this model over ``<version>/model.onnx``; on GPU the official container serves the same
file with the ONNX Runtime/TensorRT backend instead (``configs/gpu.pbtxt``).
Tensor names come from the model's own config, generated from ``hndsr.serving.stages``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from hndsr.serving.admission import lower_priority


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.chunk = int(params.get("chunk", "16"))
        lower_priority()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        # Four stage processes share the cores: threads that spin-wait after a run (onnxruntime's
        # default) would steal them from the next stage in the chain.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        n = next(iter(feeds.values())).shape[0]
        parts = [
            self.session.run(self.output_names, {k: v[i : i + self.chunk] for k, v in feeds.items()})
            for i in range(0, n, self.chunk)
        ]
        return [np.concatenate(outs) for outs in zip(*parts)]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(np.float32, copy=False)
                for name in self.input_names
            }
            outputs = self._run(feeds)
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(n, o) for n, o in zip(self.output_names, outputs)])
            )
        return responses
