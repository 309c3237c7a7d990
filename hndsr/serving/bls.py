"""``StageRunner`` that calls the stage models through Triton BLS (CPU or GPU tensors via DLPack)."""

from __future__ import annotations

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from hndsr.serving.stages import MAX_BATCH, STAGE_SPECS


class StageError(RuntimeError):
    """A stage model answered with an error."""


class BLSRunner:
    """One BLS request per call, carrying the whole tile batch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def _infer(self, stage: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
        spec = STAGE_SPECS[stage]
        if tensors[0].shape[0] > MAX_BATCH:
            raise StageError(f"{stage}: {tensors[0].shape[0]} tiles exceed the stage batch limit {MAX_BATCH}")
        inputs = [
            pb_utils.Tensor.from_dlpack(s.name, to_dlpack(t.contiguous().float())) for s, t in zip(spec.inputs, tensors)
        ]
        request = pb_utils.InferenceRequest(
            model_name=stage, inputs=inputs, requested_output_names=[s.name for s in spec.outputs]
        )
        response = request.exec()
        if response.has_error():
            raise StageError(f"{stage}: {response.error().message()}")
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
