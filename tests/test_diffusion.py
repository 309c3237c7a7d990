"""The DDIM scheduler against references computed here, independently of ``hndsr.inference.diffusion``:

- the cosine schedule against the closed form of Nichol & Dhariwal (2021), in numpy float64;
- a deterministic (eta = 0) step with an oracle v-prediction (from known x0 and noise) lands on the
  forward-process point of the next timestep, for every step of several chains, and a whole chain
  returns x0;
- eta = 1 is ancestral DDPM sampling: the step's mean and variance are the DDPM posterior's;
- ``set_timesteps`` against hand-written lists (trailing spacing, as diffusers' ``"trailing"``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hndsr.inference.diffusion import DDIMScheduler

T = 1000
CHAINS = [(1, None), (2, None), (4, None), (10, None), (50, None), (1, 149), (3, 149), (4, 149), (150, 149),
          (7, 450), (1, 0)]  # fmt: skip


def closed_form_alpha_bar() -> np.ndarray:
    """alpha_bar[i] at training timestep i (i = 0..T-1), Nichol & Dhariwal (2021) eq. 17 with s = 0.008:
    alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) * pi / 2), timestep i being t = i + 1;
    each beta = 1 - alpha_bar(t) / alpha_bar(t - 1) clipped to 0.999 (their eq. 17 note)."""
    s = 0.008
    t = np.arange(T + 1, dtype=np.float64)
    f = np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f[1:] / f[0]
    clipped = 1 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]]) > 0.999
    assert clipped.sum() == 1 and clipped[-1], "only the last beta reaches the clip (f(T) = 0)"
    alpha_bar[-1] = alpha_bar[-2] * (1 - 0.999)
    return alpha_bar


ALPHA_BAR = closed_form_alpha_bar()


def alpha_bar(t: int) -> float:
    return 1.0 if t < 0 else float(ALPHA_BAR[t])


def forward(x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """q(x_t | x0) sample with the given noise: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise."""
    a = alpha_bar(t)
    return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise


def oracle_v(x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """The exact v-prediction (Salimans & Ho 2022): v = sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x0."""
    a = alpha_bar(t)
    return math.sqrt(a) * noise - math.sqrt(1 - a) * x0


def pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    return list(zip(timesteps, [*timesteps[1:], -1]))


def data(seed: int = 0, shape: tuple[int, ...] = (3, 4, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_cosine_schedule_matches_closed_form():
    got = DDIMScheduler().alphas_cumprod
    assert got.dtype == torch.float64 and got.shape == (T,)
    np.testing.assert_allclose(got.numpy(), ALPHA_BAR, rtol=1e-9, atol=1e-15)
    assert 0.9999 < ALPHA_BAR[0] < 1 and ALPHA_BAR[-1] < 1e-8  # nearly clean at 0, pure noise at T-1


@pytest.mark.parametrize(("n", "start"), CHAINS)
def test_deterministic_step_lands_on_forward_process(n, start):
    """eta = 0 with the exact v: every step maps the forward point at t onto the forward point at
    t_prev (same noise), and the last onto x0."""
    s = DDIMScheduler()
    x0, noise = data()
    for t, t_prev in pairs(s.set_timesteps(n, start)):
        prev, pred_x0 = s.step(oracle_v(x0, noise, t), t, forward(x0, noise, t))
        torch.testing.assert_close(pred_x0, x0, rtol=0, atol=1e-9)
        torch.testing.assert_close(prev, forward(x0, noise, t_prev), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("n", "start"), CHAINS)
def test_deterministic_chain_returns_x0(n, start):
    s = DDIMScheduler()
    x0, noise = data(1)
    timesteps = s.set_timesteps(n, start)
    x = forward(x0, noise, timesteps[0])
    for t in timesteps:
        x, _ = s.step(oracle_v(x0, noise, t), t, x)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("n", "start"), [(4, None), (10, None), (3, 149), (7, 450)])
def test_eta_one_is_the_ddpm_posterior(n, start):
    """eta = 1 (Song et al. 2021, eq. 16): mean and variance of the step are those of the DDPM
    posterior q(x_prev | x_t, x0) (Ho et al. 2020, eq. 6-7), with beta = 1 - alpha_bar_t / alpha_bar_prev
    for a step that skips timesteps."""
    s = DDIMScheduler()
    x0, noise = data(2)
    unit = torch.ones_like(x0)
    for t, t_prev in pairs(s.set_timesteps(n, start)):
        a_t, a_prev = alpha_bar(t), alpha_bar(t_prev)
        beta = 1 - a_t / a_prev
        variance = (1 - a_prev) / (1 - a_t) * beta
        x_t = forward(x0, noise, t)
        mean = math.sqrt(a_prev) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x_t
        v = oracle_v(x0, noise, t)
        if variance == 0:  # the last step of a chain: x0 itself, no noise to add
            torch.testing.assert_close(s.step(v, t, x_t, eta=1.0, noise=unit)[0], x0, rtol=0, atol=1e-9)
            continue
        at_mean, _ = s.step(v, t, x_t, eta=1.0, noise=torch.zeros_like(x0))
        one_sigma, _ = s.step(v, t, x_t, eta=1.0, noise=unit)
        torch.testing.assert_close(at_mean, mean, rtol=0, atol=1e-9)
        sigma = (one_sigma - at_mean).mean().item()
        assert sigma**2 == pytest.approx(variance, rel=1e-9)


def test_stochastic_step_needs_noise():
    s = DDIMScheduler()
    s.set_timesteps(4)
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="noise"):
        s.step(x, 999, x, eta=0.5)


@pytest.mark.parametrize(
    ("n", "start", "expected"),
    [
        (0, None, []),
        (1, None, [999]),
        (3, None, [999, 666, 332]),
        (4, None, [999, 749, 499, 249]),
        (10, None, [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        (1, 149, [149]),
        (2, 149, [149, 74]),
        (3, 149, [149, 99, 49]),
        (4, 149, [149, 111, 74, 37]),
        (150, 149, list(range(149, -1, -1))),
        (1, 0, [0]),
    ],
)
def test_set_timesteps_hand_written(n, start, expected):
    s = DDIMScheduler()
    assert s.set_timesteps(n, start) == expected
    assert s.timesteps == expected
    if expected:
        assert s.previous_timestep(expected[-1]) == -1 and s.alpha(-1) == 1.0


@pytest.mark.parametrize(("n", "start"), [(-1, None), (1001, None), (151, 149), (2, 0), (1, 1000), (1, -1)])
def test_set_timesteps_rejects(n, start):
    with pytest.raises(ValueError):
        DDIMScheduler().set_timesteps(n, start)


def test_training_targets_are_the_forward_process():
    """``add_noise`` and ``velocity`` (the training inputs and targets, float32) agree with the
    references, so that a model trained on them is sampled correctly by ``step``."""
    s = DDIMScheduler()
    x0, noise = (x.float() for x in data(3))
    timesteps = [0, 149, 999]
    xt = s.add_noise(x0, noise, torch.tensor(timesteps))
    v = s.velocity(x0, noise, torch.tensor(timesteps))
    for i, t in enumerate(timesteps):
        torch.testing.assert_close(xt[i], forward(x0[i], noise[i], t), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v[i], oracle_v(x0[i], noise[i], t), rtol=1e-5, atol=1e-5)


def test_batched_x0_prediction_is_the_steps_x0():
    """``predicted_x0`` (what the adversarial fine-tune decodes, one timestep per sample) is the
    x0 that ``step`` predicts at each of those timesteps, and inverts the forward process."""
    s = DDIMScheduler()
    x0, noise = (x.float() for x in data(3))
    timesteps = [0, 149, 999]
    xt = s.add_noise(x0, noise, torch.tensor(timesteps))
    v = s.velocity(x0, noise, torch.tensor(timesteps))
    got = s.predicted_x0(v, xt, torch.tensor(timesteps))
    torch.testing.assert_close(got, x0, rtol=1e-4, atol=1e-4)
    for i, t in enumerate(timesteps):
        s.set_timesteps(1, start=t)
        torch.testing.assert_close(got[i], s.step(v[i], t, xt[i])[1].float(), rtol=1e-5, atol=1e-5)
