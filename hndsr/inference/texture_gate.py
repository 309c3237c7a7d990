"""Texture gate: put generated detail where the LR image says there is texture, not grain on flat ground.

The generative path adds a residual latent (the diffusion sample) to the prior's z0. Trained to
fool a discriminator, the UNet adds high frequencies everywhere, also over water, sand, lawns and
shadow, where the HR image has none (measured as *grain*, ``hndsr.evaluation.metrics.texture``). The gate
weights the residual per latent cell by ``gain(scale) * s^2 / (s^2 + floor^2)``, ``s`` the local contrast
of the bicubic canvas (RMS of its luma minus a 5x5 mean, over a 3x3-cell neighbourhood, in grey
levels): near ``gain`` where the LR has structure, near 0 where it is flat. Floor 0 and gain 1
turn it off. The LR is all the gate sees, so it is the same for every seed and step count.
The served floor and gain were chosen on training tiles (docs/training.md) and are stored with
the weights (``HNDSR.texture_floor``, ``HNDSR.texture_gain``).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from hndsr.config import LATENT_FACTOR

_LUMA = (0.299, 0.587, 0.114)


def local_contrast(canvas: torch.Tensor) -> torch.Tensor:
    """RMS local contrast (grey levels) of a [..., 3, H, W] canvas in [0, 1], per latent cell:
    [..., 1, H/4, W/4]."""
    lead, (height, width) = canvas.shape[:-3], canvas.shape[-2:]
    rgb = canvas.float().reshape(-1, 3, height, width)
    luma = torch.einsum("bchw,c->bhw", rgb, torch.tensor(_LUMA, device=canvas.device))[:, None] * 255
    mean = F.avg_pool2d(F.pad(luma, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    energy = F.avg_pool2d((luma - mean) ** 2, LATENT_FACTOR)
    energy = F.avg_pool2d(F.pad(energy, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return energy.sqrt().reshape(*lead, 1, *energy.shape[-2:])


FULL_GAIN_SCALE = 4.0
"""From this scale up the gate's full gain applies; below it the gain falls as ((s - 1) / 3)^3."""


def gain_at(gain: float, scale: float) -> float:
    """The gain at ``scale``: full from 4x; at 3x 0.30 of it, at 2x 0.04. At small scales the LR
    carries most of the detail and the generated residual is mostly error: on 12 training tiles
    (docs/training.md) the ungated default path was 4.5 dB below bicubic at 2x and the full gain
    0.3 dB below it at 3x, while the ramp keeps 2x at steps 0's PSNR and 3x 0.6 dB above bicubic.
    The pipeline passes the requested scale: a 2x request is computed at 4x (``MIN_MODEL_SCALE``)
    and resized down, and its generated residual is still weighted for 2x."""
    ramp = min(1.0, max(0.0, (scale - 1.0) / (FULL_GAIN_SCALE - 1.0))) ** 3
    return gain * ramp


def texture_gate(
    canvas: torch.Tensor, floor: float, gain: float = 1.0, scale: float | torch.Tensor = 4.0
) -> torch.Tensor | float:
    """Per-cell weight of the generated residual for a [..., 3, H, W] canvas: [..., 1, H/4, W/4]
    (a number when ``floor`` is 0 and ``scale`` a number); exactly 1 when the gate is off (floor 0,
    gain 1). A batch [B, 3, H, W] may bring one scale per image ([B] or [B, 1], as in training)."""
    if floor <= 0 and gain == 1.0:
        return 1.0
    if isinstance(scale, torch.Tensor):
        gains = torch.tensor([gain_at(gain, float(s)) for s in scale.flatten()], device=canvas.device)
        gain = gains.view(-1, 1, 1, 1)
    else:
        gain = gain_at(gain, scale)
    if floor <= 0:
        return gain
    energy = local_contrast(canvas) ** 2
    return gain * energy / (energy + floor**2)
