"""The ``hndsr`` and ``hndsr_stream`` Triton models: admission control in front of ``hndsr_core``.

The same class serves ``hndsr`` and its decoupled twin ``hndsr_stream``, which streams PROGRESS
(INT32 [2]: steps done, total) responses over gRPC during the DDIM loop before the final result.
Inputs: IMAGE (UINT8 [H, W, 3]); optional SCALE (FP32 [1]), STEPS (INT32 [1]), SEED (INT64 [1]),
ETA (FP32 [1]), ENSEMBLE (INT32 [1]). Outputs: SR_IMAGE (UINT8 [round(s*H), round(s*W), 3]) and INFO (BYTES [1], a
JSON object: steps, tiles, per-stage milliseconds, device, precision, model version, seed).

This model is light (no torch) and has ``max_inflight`` + 2 instances, so a request never waits
in Triton's own queue, which a ``max_batch_size: 0`` model cannot bound. Per request:

1. admission (``hndsr.serving.admission``, shared by every front stub): beyond ``max_inflight``
   queued + running requests, or while the launcher drains, it answers at once with UNAVAILABLE
   "server overloaded ... retry later" / "server is shutting down";
2. it waits for its FIFO turn among ``max_running`` running requests, watching the client
   (cancellation) and the request's deadline (Triton's ``timeout`` request parameter, microseconds);
3. it forwards the request to ``hndsr_core`` (``hndsr.serving.core``, which validates and runs the
   pipeline) with decoupled BLS and reads its responses, meanwhile relaying cancellation/deadline
   to the core (through the admission state) and, for ``hndsr_stream``, the core's PROGRESS
   responses to the client. A core being healed (stub died) is
   retried, the pipeline being a pure function of the request.

Every response is sent before ``execute`` returns: the Python backend of Triton 24.10 races (and
can crash tritonserver) when responses are sent from other threads after ``execute`` returned.
Errors: INVALID_ARG (from the core), UNAVAILABLE (overloaded, shutting down, "request timeout
expired"), CANCELLED (client gone), INTERNAL.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from hndsr.serving.admission import (
    DEFAULT_MAX_QUEUE_WAIT_S,
    DEFAULT_STAGE_RETRY_S,
    ENV_MAX_OUTPUT_PIXELS,
    Admission,
    Refusal,
    Ticket,
    is_transient,
)
from hndsr.serving.counters import counter_families
from hndsr_client.interface import DRAINING, OVERLOADED, TIMEOUT

CORE = "hndsr_core"
OUTPUTS = ("SR_IMAGE", "INFO")
OUTCOMES = ("success", "invalid", "cancelled", "error", "overloaded", "draining", "timeout")
CONTROL_KEYS = ("max_output_pixels", "model_version", "precision")
POLL_S = 0.05


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.control = {k: params[k] for k in CONTROL_KEYS if k in params}
        if limit := os.environ.get(ENV_MAX_OUTPUT_PIXELS):  # a small /dev/shm (the launcher says)
            self.control["max_output_pixels"] = str(min(int(limit), int(self.control["max_output_pixels"])))
        # The inputs this model's config declares (generated from ``hndsr_client.interface``).
        self.forwarded = tuple(tensor["name"] for tensor in config["input"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.admission = Admission.from_env(params)
        self.max_queue_wait_s = float(params.get("max_queue_wait_s", DEFAULT_MAX_QUEUE_WAIT_S))
        self.retry_s = float(params.get("stage_retry_s", DEFAULT_STAGE_RETRY_S))
        self._init_metrics()
        threading.Thread(target=self._exit_with_parent, args=(os.getppid(),), daemon=True).start()
        if args.get("model_instance_name", "").endswith("_0"):
            pb_utils.Logger.log_info(
                f"{args['model_instance_name']}: admission {self.admission.path} "
                f"max_inflight={self.admission.max_inflight} max_running={self.admission.max_running}"
            )

    def finalize(self) -> None:
        self.admission.close()

    @staticmethod
    def _exit_with_parent(parent: int) -> None:
        """Never outlive tritonserver (a stub waiting on a BLS answer could hang on its own)."""
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    def _init_metrics(self) -> None:
        self._families = counter_families(
            {
                "hndsr_requests_total": "HNDSR requests by outcome",
                "hndsr_queue_wait_ms_total": "Milliseconds admitted requests waited for their turn to run",
                "hndsr_core_retries_total": "Requests re-sent to hndsr_core while it was being healed",
            }
        )
        requests = self._families["hndsr_requests_total"]
        self.m_requests = {o: requests.Metric(labels={"outcome": o}) for o in OUTCOMES}
        self.m_queue_ms = self._families["hndsr_queue_wait_ms_total"].Metric(labels={})
        self.m_retries = self._families["hndsr_core_retries_total"].Metric(labels={})

    # -- execute: every response is sent before it returns ------------------------------------------

    def execute(self, requests: list) -> list | None:
        if not self.decoupled:
            return [self._handle(request, None) for request in requests]
        for request in requests:
            sender = request.get_response_sender()
            response = self._handle(request, sender)
            try:
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - the client may be gone
                pb_utils.Logger.log_warn(f"hndsr_stream: final response not sent: {exc!r}")
        return None

    @staticmethod
    def _error(message: str, code=None):
        error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        return pb_utils.InferenceResponse(error=error)

    def _count(self, outcome: str, response):
        self.m_requests[outcome].increment(1)
        return response

    def _handle(self, request, sender):
        arrived = time.monotonic()
        timeout_s = (request.timeout() or 0) / 1e6
        deadline = arrived + timeout_s if timeout_s > 0 else None
        is_cancelled = sender.is_cancelled if sender is not None else request.is_cancelled

        def should_stop() -> bool:
            return (deadline is not None and time.monotonic() > deadline) or is_cancelled()

        ticket = self.admission.admit(time.time() + timeout_s if deadline is not None else None)
        if isinstance(ticket, Refusal):
            outcome = "draining" if ticket.reason == DRAINING else "overloaded"
            return self._count(outcome, self._error(ticket.message, pb_utils.TritonError.UNAVAILABLE))
        try:
            started = self.admission.wait_start(ticket, should_stop, self.max_queue_wait_s)
            self.m_queue_ms.increment((time.monotonic() - arrived) * 1000)
            if started is None:
                message = f"{OVERLOADED}: not started within {self.max_queue_wait_s:.0f}s; retry later"
                return self._count("overloaded", self._error(message, pb_utils.TritonError.UNAVAILABLE))
            if not started:
                return self._stopped(deadline, arrived, "cancelled while queued")
            return self._forward(request, ticket, sender, should_stop, deadline, arrived)
        except Exception as exc:  # noqa: BLE001 - answer every request, keep serving
            pb_utils.Logger.log_error(f"hndsr: request failed: {exc!r}")
            return self._count("error", self._error(f"internal error: {exc}"))
        finally:
            self.admission.release(ticket)

    def _stopped(self, deadline: float | None, arrived: float, detail: str):
        """The answer to a request stopped early: its deadline passed, or its client went away."""
        if deadline is not None and time.monotonic() > deadline:
            message = f"{TIMEOUT} after {time.monotonic() - arrived:.1f}s ({detail})"
            return self._count("timeout", self._error(message, pb_utils.TritonError.UNAVAILABLE))
        return self._count("cancelled", self._error(detail, pb_utils.TritonError.CANCELLED))

    # -- forwarding to hndsr_core ------------------------------------------------------------------

    def _forward(self, request, ticket: Ticket, sender, should_stop, deadline, arrived):
        inputs = [t for t in (pb_utils.get_input_tensor_by_name(request, n) for n in self.forwarded) if t is not None]
        control = {**self.control, "ticket": ticket.id, "progress": self.decoupled}
        inputs.append(pb_utils.Tensor("CONTROL", np.array([json.dumps(control).encode()], dtype=np.object_)))
        retry_until = time.monotonic() + self.retry_s
        sent = 0
        while True:
            response, sent = self._call_core(inputs, ticket, sender, should_stop, sent)
            if not response.has_error():
                break
            error = response.error()
            if is_transient(error.message()) and not should_stop() and time.monotonic() + 0.5 < retry_until:
                self.m_retries.increment(1)
                time.sleep(0.5)
                continue
            return self._count("error", self._error(f"{CORE}: {error.message()}"))
        outputs = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in OUTPUTS}
        info = json.loads(outputs["INFO"].reshape(-1)[0])
        if "error" in info:
            return self._core_error(info["code"], info["error"], deadline, arrived)
        tensors = [pb_utils.Tensor(name, np.array(value, copy=True)) for name, value in outputs.items()]
        return self._count("success", pb_utils.InferenceResponse(tensors))

    def _call_core(self, inputs: list, ticket: Ticket, sender, should_stop, sent: int):
        """One decoupled BLS call to the core, read on a helper thread while this one relays its
        PROGRESS responses to the client (``hndsr_stream``) and watches for cancellation; returns
        the core's final response and the progress sent so far. Cancellation still goes through
        the admission state: BLS ``cancel()`` needs Triton 25.05."""
        box: dict = {}
        steps: queue.SimpleQueue = queue.SimpleQueue()

        def call() -> None:
            try:
                request = pb_utils.InferenceRequest(
                    model_name=CORE, inputs=inputs, requested_output_names=[*OUTPUTS, "PROGRESS"]
                )
                for response in request.exec(decoupled=True):
                    if response.has_error():
                        box["response"] = response
                        continue
                    progress = pb_utils.get_output_tensor_by_name(response, "PROGRESS")
                    if progress is not None:
                        steps.put(progress.as_numpy().copy())
                    elif pb_utils.get_output_tensor_by_name(response, "SR_IMAGE") is not None:
                        box["response"] = response
            except Exception as exc:  # noqa: BLE001 - re-raised below
                box["exc"] = exc

        def relay(sent: int) -> int:
            while not steps.empty():
                done, total = (int(v) for v in steps.get())
                if sender is not None and done > sent:
                    progress = pb_utils.Tensor("PROGRESS", np.array([done, total], np.int32))
                    sender.send(pb_utils.InferenceResponse([progress]))
                    sent = done
            return sent

        worker = threading.Thread(target=call, name=f"hndsr-core-{ticket.id}", daemon=True)
        worker.start()
        cancelled = False
        while worker.is_alive():
            worker.join(POLL_S)
            if not cancelled and should_stop():
                self.admission.cancel(ticket)
                cancelled = True
            sent = relay(sent)
        if "exc" in box:
            raise box["exc"]
        if "response" not in box:
            raise RuntimeError(f"{CORE} ended its response stream without a result")
        return box["response"], relay(sent)

    def _core_error(self, code: str, message: str, deadline, arrived):
        if code == "INVALID_ARG":
            return self._count("invalid", self._error(message, pb_utils.TritonError.INVALID_ARG))
        if code == "CANCELLED":
            return self._stopped(deadline, arrived, message)
        return self._count("error", self._error(message))
