"""Noise schedule and DDIM sampler (v-prediction), the single implementation used everywhere.

Shaped like diffusers' ``DDIMScheduler``: a small object with ``set_timesteps`` and ``step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from hndsr.config import NUM_TRAIN_TIMESTEPS


def cosine_alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal), returned as cumulative alpha products in float64."""
    return _cosine_alphas_cumprod(num_steps, max_beta).clone()


@lru_cache(maxsize=4)
def _cosine_alphas_cumprod(num_steps: int, max_beta: float) -> torch.Tensor:
    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


@dataclass
class DDIMScheduler:
    """Deterministic (eta = 0) or stochastic DDIM over a v-predicting model."""

    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def __post_init__(self) -> None:
        self.alphas_cumprod = cosine_alphas_cumprod(self.num_train_timesteps)
        self.timesteps: list[int] = []

    def set_timesteps(self, num_inference_steps: int, start: int | None = None) -> list[int]:
        """Trailing spacing from ``start`` (default: the last, pure-noise timestep) down to 0.

        A ``start`` below the last timestep is SDEdit-style partial sampling: the chain begins
        from a noised version of the prior instead of pure noise, so few steps suffice.
        """
        start = self.num_train_timesteps - 1 if start is None else int(start)
        if not 0 <= start < self.num_train_timesteps:
            raise ValueError(f"start must be in [0, {self.num_train_timesteps - 1}], got {start}")
        if num_inference_steps < 0 or num_inference_steps > start + 1:
            raise ValueError(f"num_inference_steps must be in [0, {start + 1}], got {num_inference_steps}")
        if num_inference_steps == 0:
            self.timesteps = []
        else:
            ratio = (start + 1) / num_inference_steps
            self.timesteps = [int(round(start + 1 - i * ratio)) - 1 for i in range(num_inference_steps)]
        return self.timesteps

    def previous_timestep(self, timestep: int) -> int:
        idx = self.timesteps.index(timestep)
        return self.timesteps[idx + 1] if idx + 1 < len(self.timesteps) else -1

    def alpha(self, timestep: int) -> float:
        return 1.0 if timestep < 0 else float(self.alphas_cumprod[timestep])

    def _alphas(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Cumulative alphas of a batch of timesteps, shaped to broadcast over ``like`` (float32)."""
        return self.alphas_cumprod.to(like.device)[timesteps].float().view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a = self._alphas(timesteps, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Training target v = sqrt(a) * eps - sqrt(1 - a) * x0."""
        a = self._alphas(timesteps, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predicted_x0(self, v: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(a) * x_t - sqrt(1 - a) * v for a batch with one timestep per sample (training)."""
        a = self._alphas(timesteps, sample)
        return a.sqrt() * sample - (1 - a).sqrt() * v

    def step(
        self,
        v: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update x_t -> x_{t-1}; returns (previous sample, predicted x0)."""
        a_t = self.alpha(timestep)
        a_prev = self.alpha(self.previous_timestep(timestep))
        x0 = math.sqrt(a_t) * sample - math.sqrt(1 - a_t) * v
        eps = math.sqrt(a_t) * v + math.sqrt(1 - a_t) * sample
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_prev, 0.0))
        prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                raise ValueError("eta > 0 needs a noise tensor")
            prev = prev + sigma * noise
        return prev, x0
