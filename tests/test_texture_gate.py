"""The texture gate: off means off, it follows the LR's local contrast, and its gain ramps with scale."""

import pytest
import torch

from hndsr.inference.texture_gate import gain_at, local_contrast, texture_gate


def test_off_is_exactly_one_and_the_gain_ramps_with_scale():
    canvas = torch.rand(3, 32, 32)
    assert texture_gate(canvas, 0.0, 1.0, 2.0) == 1.0
    assert gain_at(2.0, 4.0) == gain_at(2.0, 8.0) == 2.0
    assert gain_at(2.0, 3.0) == pytest.approx(2.0 * (2 / 3) ** 3)
    assert gain_at(2.0, 2.0) == pytest.approx(2.0 / 27)
    assert gain_at(2.0, 2.0) < gain_at(2.0, 2.5) < gain_at(2.0, 3.5) < gain_at(2.0, 4.0)


def test_flat_ground_gets_no_generated_residual_and_texture_gets_the_gain():
    torch.manual_seed(0)
    canvas = torch.full((3, 64, 64), 0.5)
    canvas[:, :, 32:] += 0.2 * torch.rand(1, 64, 32)  # right half textured (about 15 grey levels RMS)
    gate = texture_gate(canvas, 2.0, 2.0, 4.0)
    assert gate.shape == (1, 16, 16)
    assert float(gate[0, :, :6].max()) < 0.01  # flat: no residual
    assert float(gate[0, :, 10:].min()) > 1.9  # textured: nearly the full gain
    assert float(local_contrast(canvas)[0, :, :6].max()) == pytest.approx(0.0, abs=1e-3)


def test_batched_gate_equals_per_image_gates():
    """Training gates a batch with one scale per image; each row must be the served gate."""
    torch.manual_seed(0)
    canvas = torch.rand(3, 3, 32, 48)
    scales = torch.tensor([[2.0], [3.0], [4.0]])
    batched = texture_gate(canvas, 2.0, 2.0, scales)
    assert batched.shape == (3, 1, 8, 12)
    for i in range(3):
        assert torch.allclose(batched[i], texture_gate(canvas[i], 2.0, 2.0, float(scales[i])))
