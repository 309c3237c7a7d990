import math

import pytest
import torch

from hndsr.diffusion import DDIMScheduler


def test_timesteps_trailing_and_zero():
    s = DDIMScheduler()
    assert s.set_timesteps(0) == []
    steps = s.set_timesteps(4)
    assert steps == [999, 749, 499, 249]
    assert len(s.set_timesteps(20)) == 20 and s.timesteps[0] == 999
    with pytest.raises(ValueError):
        s.set_timesteps(-1)


def test_partial_chain_starts_at_start_and_ends_clean():
    s = DDIMScheduler()
    assert s.set_timesteps(1, start=149) == [149]
    assert s.set_timesteps(3, start=149) == [149, 99, 49]
    assert s.previous_timestep(49) == -1 and s.alpha(-1) == 1.0
    with pytest.raises(ValueError):
        s.set_timesteps(151, start=149)
    with pytest.raises(ValueError):
        s.set_timesteps(2, start=1000)


def test_alphas_monotone():
    a = DDIMScheduler().alphas_cumprod
    assert a[0] > 0.99 and a[-1] < 1e-3 and bool((a[1:] < a[:-1]).all())


def test_ddim_step_matches_closed_form():
    torch.manual_seed(0)
    s = DDIMScheduler()
    s.set_timesteps(10)
    t, t_prev = s.timesteps[2], s.timesteps[3]
    x, v, noise = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    a_t, a_p = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t_prev])
    x0 = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * v
    eps = math.sqrt(a_t) * v + math.sqrt(1 - a_t) * x
    for eta in (0.0, 0.7):
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        expected = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * eps + sigma * noise
        prev, pred_x0 = s.step(v, t, x, eta=eta, noise=noise)
        torch.testing.assert_close(prev, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred_x0, x0)


def test_exact_velocity_recovers_x0_in_one_step():
    torch.manual_seed(1)
    s = DDIMScheduler()
    s.set_timesteps(1)
    x0, noise = torch.randn(2, 16), torch.randn(2, 16)
    t = torch.tensor([s.timesteps[0]] * 2)
    xt = s.add_noise(x0, noise, t)
    prev, _ = s.step(s.velocity(x0, noise, t), s.timesteps[0], xt)
    torch.testing.assert_close(prev, x0, rtol=1e-4, atol=1e-4)
