"""The ``hndsr`` Triton model: validates, tiles, runs the DDIM loop over BLS, stitches.

The same class serves ``hndsr_stream``, a decoupled twin configuration that streams PROGRESS
(INT32 [2]: steps done, total) responses over gRPC during the DDIM loop before the final result.

Inputs: IMAGE (UINT8 [H, W, 3]); optional SCALE (FP32 [1]), STEPS (INT32 [1]), SEED (INT64 [1]),
ETA (FP32 [1]). Outputs: SR_IMAGE (UINT8 [round(s*H), round(s*W), 3]) and INFO (BYTES [1], a
JSON object: steps, tiles, per-stage milliseconds, device, precision, model version, seed).
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from hndsr.config import DEFAULT_SCALE, DEFAULT_STEPS, Limits
from hndsr.pipeline import Cancelled, InvalidRequest, Sampling, SRParams, super_resolve, validate
from hndsr.serving.bls import BLSRunner


def _scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)
    if value.size != 1:
        raise InvalidRequest(f"{name} must hold exactly one value, got {value.size}")
    return value[0].item()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.sampling = Sampling(float(params["residual_scale"]), int(params["start_timestep"]))
        self.limits = Limits(max_output_pixels=int(params.get("max_output_pixels", Limits.max_output_pixels)))
        self.version = params.get("model_version", "unknown")
        self.precision = params.get("precision", "fp32")
        if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(1)
        self.runner = BLSRunner(self.device)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self._init_metrics()

    def _init_metrics(self) -> None:
        counter = pb_utils.MetricFamily.COUNTER
        # Families must outlive their metrics, so they are kept on the instance.
        self._families = {
            name: pb_utils.MetricFamily(name, doc, counter)
            for name, doc in (
                ("hndsr_requests_total", "HNDSR requests by outcome"),
                ("hndsr_tiles_total", "Tiles processed"),
                ("hndsr_ddim_steps_total", "DDIM steps run"),
                ("hndsr_stage_duration_ms_total", "Milliseconds spent per stage (summed over requests)"),
            )
        }
        requests = self._families["hndsr_requests_total"]
        self.m_requests = {
            o: requests.Metric(labels={"outcome": o}) for o in ("success", "invalid", "cancelled", "error")
        }
        self.m_tiles = self._families["hndsr_tiles_total"].Metric(labels={})
        self.m_steps = self._families["hndsr_ddim_steps_total"].Metric(labels={})
        stage_ms = self._families["hndsr_stage_duration_ms_total"]
        self.m_stage = {
            s: stage_ms.Metric(labels={"stage": s}) for s in ("encoder", "prior", "unet", "decoder", "total")
        }

    def _params(self, request) -> SRParams:
        return SRParams(
            scale=float(_scalar(request, "SCALE", DEFAULT_SCALE)),
            steps=int(_scalar(request, "STEPS", DEFAULT_STEPS)),
            seed=int(_scalar(request, "SEED", 0)),
            eta=float(_scalar(request, "ETA", 0.0)),
        )

    def _handle(self, request, is_cancelled, on_step=None):
        tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        params = self._params(request)
        shape = tuple(int(d) for d in tensor.shape())
        validate(shape, "uint8", params, self.limits)  # Triton has already enforced the UINT8 dtype
        image = from_dlpack(tensor.to_dlpack())
        result = super_resolve(image, params, self.runner, self.sampling, is_cancelled=is_cancelled, on_step=on_step)
        info = {**result.info, "model_version": self.version, "precision": self.precision}
        self.m_tiles.increment(info["tiles"])
        self.m_steps.increment(info["steps"])
        for stage, ms in info["stage_ms"].items():
            self.m_stage[stage].increment(ms)
        self.m_stage["total"].increment(info["total_ms"])
        out = result.image if self.device.type == "cuda" else result.image.cpu()
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor.from_dlpack("SR_IMAGE", to_dlpack(out)),
                pb_utils.Tensor("INFO", np.array([json.dumps(info).encode()], dtype=np.object_)),
            ]
        )

    def _respond(self, request, is_cancelled, on_step=None):
        """The final response for a request, or an error response; counts the outcome."""
        start = time.perf_counter()
        try:
            response = self._handle(request, is_cancelled, on_step)
            self.m_requests["success"].increment(1)
            return response
        except InvalidRequest as exc:
            self.m_requests["invalid"].increment(1)
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Cancelled as exc:
            self.m_requests["cancelled"].increment(1)
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.CANCELLED)
        except Exception as exc:  # noqa: BLE001 - report any failure to the client, keep serving
            self.m_requests["error"].increment(1)
            pb_utils.Logger.log_error(f"hndsr request failed after {time.perf_counter() - start:.1f}s: {exc!r}")
            error = pb_utils.TritonError(f"internal error: {exc}")
        return pb_utils.InferenceResponse(error=error)

    def execute(self, requests: list) -> list | None:
        if not self.decoupled:
            return [self._respond(r, r.is_cancelled) for r in requests]
        for request in requests:
            sender = request.get_response_sender()

            def progress(done: int, total: int, sender=sender) -> None:
                sender.send(
                    pb_utils.InferenceResponse([pb_utils.Tensor("PROGRESS", np.array([done, total], np.int32))])
                )

            final = self._respond(request, sender.is_cancelled, progress)
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
