"""The ``hndsr_core`` Triton model: validates, tiles, runs the DDIM loop over BLS, stitches.

Internal: only the front models ``hndsr`` and ``hndsr_stream`` (``hndsr.serving.orchestrator``)
call it, once they have admitted a request and it is its turn to run; it has as many instances
as requests may run at once, so it never queues. Inputs: those of ``hndsr`` plus CONTROL (BYTES
[1], JSON from the front: the admission ticket, the output limit, whether to send progress); the
sampling constants of the served weights come from its own config (``sampling``). Decoupled:
PROGRESS responses after each DDIM step (when asked), then SR_IMAGE and INFO (always on the CPU).

Between DDIM steps, and while a stage is being healed, it stops when the ticket says so (the
client went away or its deadline passed: ``Admission.should_stop``). A failure is answered as an empty SR_IMAGE and
INFO ``{"error", "code"}`` with code INVALID_ARG (field and limit), CANCELLED (stopped early; the
front tells a deadline from a cancellation) or INTERNAL: BLS would turn every error code into INTERNAL.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from hndsr.inference.pipeline import Cancelled, InvalidRequest, Sampling, SRParams, super_resolve, validate
from hndsr.serving.admission import DEFAULT_STAGE_RETRY_S, ENV_BLS_CHUNK, Admission, lower_priority
from hndsr.serving.bls import BLSRunner
from hndsr.serving.counters import counter_families
from hndsr.serving.heap import HeapTrimmer
from hndsr.serving.stages import MAX_BATCH
from hndsr_client.interface import ENSEMBLE, ETA, SCALE, SEED, STEPS, Limits


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
        if args.get("model_instance_kind") == "GPU":
            # A GPU layout on a machine without CUDA must not quietly run (and report) on the CPU.
            if not torch.cuda.is_available():
                raise RuntimeError("this model is configured KIND_GPU but torch sees no CUDA device")
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(1)
        self.admission = Admission.from_env(params)
        lower_priority()
        self.stage_retry_s = float(params.get("stage_retry_s", DEFAULT_STAGE_RETRY_S))
        self.sampling = Sampling.from_json(params["sampling"])
        self.bls_chunk = int(os.environ.get(ENV_BLS_CHUNK) or params.get("bls_chunk", MAX_BATCH))
        self.trimmer = HeapTrimmer()
        self._init_metrics()

    def finalize(self) -> None:
        self.admission.close()

    def _init_metrics(self) -> None:
        self._families = counter_families(
            {
                "hndsr_tiles_total": "Tiles processed",
                "hndsr_ddim_steps_total": "DDIM steps run",
                "hndsr_stage_duration_ms_total": "Milliseconds spent per stage (summed over requests)",
                "hndsr_stage_retries_total": "Stage calls retried while a stage was being healed",
            }
        )
        self.m_tiles = self._families["hndsr_tiles_total"].Metric(labels={})
        self.m_steps = self._families["hndsr_ddim_steps_total"].Metric(labels={})
        stage_ms = self._families["hndsr_stage_duration_ms_total"]
        self.m_stage = {
            s: stage_ms.Metric(labels={"stage": s}) for s in ("encoder", "prior", "unet", "decoder", "total")
        }
        self.m_retries = self._families["hndsr_stage_retries_total"].Metric(labels={})

    def execute(self, requests: list) -> None:
        """Decoupled: PROGRESS responses after each DDIM step (when the front asks for them), then
        the result as the final response (decoupled BLS streams them to the front directly)."""
        with self.trimmer.serving():
            for request in requests:
                sender = request.get_response_sender()
                response = self._respond(request, sender)
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _respond(self, request, sender):
        """The result, or the failure as an empty SR_IMAGE plus INFO {"error", "code"}: a BLS caller
        gets every error code as INTERNAL (checked again with decoupled BLS on Triton 24.10: an
        INVALID_ARG error response reaches the front as INTERNAL), so the front reads the code
        from INFO instead."""
        start = time.perf_counter()
        try:
            return self._handle(request, sender)
        except InvalidRequest as exc:
            return self._failure(str(exc), "INVALID_ARG")
        except Cancelled as exc:
            return self._failure(str(exc), "CANCELLED")
        except Exception as exc:  # noqa: BLE001 - report any failure to the client, keep serving
            pb_utils.Logger.log_error(f"hndsr request failed after {time.perf_counter() - start:.1f}s: {exc!r}")
            return self._failure(f"internal error: {exc}", "INTERNAL")

    @staticmethod
    def _failure(message: str, code: str):
        info = json.dumps({"error": message, "code": code}).encode()
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor("SR_IMAGE", np.zeros((0, 0, 3), np.uint8)),
                pb_utils.Tensor("INFO", np.array([info], dtype=np.object_)),
            ]
        )

    def _handle(self, request, sender):
        control = json.loads(pb_utils.get_input_tensor_by_name(request, "CONTROL").as_numpy().reshape(-1)[0])
        ticket = control.get("ticket")
        limits = Limits(max_output_pixels=int(control.get("max_output_pixels", Limits.max_output_pixels)))
        params = SRParams(
            scale=float(_scalar(request, SCALE.name, SCALE.default)),
            steps=int(_scalar(request, STEPS.name, STEPS.default)),
            seed=int(_scalar(request, SEED.name, SEED.default)),
            eta=float(_scalar(request, ETA.name, ETA.default)),
            ensemble=int(_scalar(request, ENSEMBLE.name, ENSEMBLE.default)),
        )
        tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        validate(tuple(int(d) for d in tensor.shape()), "uint8", params, limits)  # Triton enforced UINT8

        def should_stop() -> bool:
            return ticket is not None and self.admission.should_stop(ticket)

        on_step = None
        if control.get("progress") and ticket is not None:

            def on_step(done: int, total: int) -> None:
                progress = pb_utils.Tensor("PROGRESS", np.array([done, total], np.int32))
                sender.send(pb_utils.InferenceResponse([progress]))

        runner = BLSRunner(
            self.device, should_stop, self.stage_retry_s, lambda stage: self.m_retries.increment(1), self.bls_chunk
        )
        image = from_dlpack(tensor.to_dlpack()).to(self.device)
        result = super_resolve(image, params, runner, self.sampling, is_cancelled=should_stop, on_step=on_step)
        info = {**result.info, "model_version": control.get("model_version"), "precision": control.get("precision")}
        self.m_tiles.increment(info["tiles"])
        self.m_steps.increment(info["steps"])
        for stage, ms in info["stage_ms"].items():
            self.m_stage[stage].increment(ms)
        self.m_stage["total"].increment(info["total_ms"])
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor.from_dlpack("SR_IMAGE", to_dlpack(result.image.cpu().contiguous())),
                pb_utils.Tensor("INFO", np.array([json.dumps(info).encode()], dtype=np.object_)),
            ]
        )
