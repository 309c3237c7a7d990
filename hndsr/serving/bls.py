"""``StageRunner`` that calls the stage models through Triton BLS (CPU or GPU tensors via DLPack).

A stage whose stub died is reloaded by the launcher's watchdog (``hndsr.serving.server``); while
that happens its BLS calls fail with "not healthy" / "no available versions". Such calls are
retried (a stage call is a pure function of its inputs) until ``retry_s`` has passed or the
request should stop (client gone, deadline), so a request in flight survives a stage crash.

Tiles go to a stage in chunks of ``chunk`` (the core config's ``bls_chunk``): every Python-backend
stub's shared-memory pool grows to the largest tensors it has carried and never shrinks, so a
whole 16 MP batch in one call would grow each stage's pool and the core's by hundreds of MB, and
a 64 MB /dev/shm (a container's default) is full after one large request. Chunked, a stage pool
stays below a few MB whatever the image size.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from hndsr.inference.pipeline import Cancelled
from hndsr.serving.admission import is_transient
from hndsr.serving.stages import MAX_BATCH, STAGE_SPECS


class StageError(RuntimeError):
    """A stage model answered with an error."""


class BLSRunner:
    """BLS requests of at most ``chunk`` tiles each."""

    def __init__(
        self,
        device: torch.device,
        should_stop: Callable[[], bool] = lambda: False,
        retry_s: float = 0.0,
        on_retry: Callable[[str], None] | None = None,
        chunk: int = MAX_BATCH,
    ) -> None:
        self.device = device
        self.chunk = max(1, min(chunk, MAX_BATCH))
        self.should_stop = should_stop
        self.retry_s = retry_s
        self.on_retry = on_retry

    def _exec(self, stage: str, inputs: list, outputs: list[str]):
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        while True:
            request = pb_utils.InferenceRequest(model_name=stage, inputs=inputs, requested_output_names=outputs)
            response = request.exec()
            if not response.has_error():
                return response
            message = response.error().message()
            if not is_transient(message) or time.monotonic() + delay > deadline:
                raise StageError(f"{stage}: {message}")
            if self.on_retry is not None:
                self.on_retry(stage)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            if self.should_stop():
                raise Cancelled(f"stopped while waiting for stage {stage} to recover ({message})")

    def _infer(self, stage: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
        parts = [
            self._infer_chunk(stage, *(t[i : i + self.chunk] for t in tensors))
            for i in range(0, tensors[0].shape[0], self.chunk)
        ]
        return [torch.cat(outs) if len(parts) > 1 else outs[0] for outs in zip(*parts)]

    def _infer_chunk(self, stage: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
        spec = STAGE_SPECS[stage]
        inputs = [
            pb_utils.Tensor.from_dlpack(s.name, to_dlpack(t.contiguous().float())) for s, t in zip(spec.inputs, tensors)
        ]
        response = self._exec(stage, inputs, [s.name for s in spec.outputs])
        # Copy out of the response's buffers: they are released with the response object.
        return [
            from_dlpack(pb_utils.get_output_tensor_by_name(response, s.name).to_dlpack()).to(self.device).clone()
            for s in spec.outputs
        ]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self._infer("encoder", image)[0]

    def prior(self, latent: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0, context = self._infer("prior", latent, scale)
        return z0, context

    def denoise(
        self, latent: torch.Tensor, timestep: torch.Tensor, prior: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        return self._infer("unet", latent, timestep.reshape(-1, 1), prior, context)[0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._infer("decoder", latent)[0]
