import pytest
import torch

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS
from hndsr.models.spectral import SpectralConv2d


def test_stage_shapes(model):
    image = torch.rand(2, 3, 64, 96)
    z = model.encoder(image)
    assert z.shape == (2, LATENT_CHANNELS, 16, 24)
    delta, context = model.prior(image, torch.tensor([[2.5], [7.0]]))
    assert delta.shape == z.shape and context.shape == (2, CONTEXT_CHANNELS, 16, 24)
    assert model.unet(z, torch.tensor([10.0, 900.0]), context).shape == z.shape
    assert model.decoder(z).shape == image.shape


def test_parameter_counts_in_ballpark(model):
    counts = model.parameter_counts()
    assert 0.5e6 < counts["encoder"] + counts["decoder"] < 1.5e6
    assert 3e6 < counts["prior"] < 6e6
    assert 2e6 < counts["unet"] < 8e6


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (17, 20), (24, 13)])
def test_spectral_conv_matches_torch_fft(size):
    torch.manual_seed(0)
    layer = SpectralConv2d(5, 7, modes=6)
    x = torch.randn(3, 5, *size)
    reference = layer.forward_fft(x)
    assert reference.abs().max() > 1e-3  # the comparison is not trivially zero
    assert (layer(x) - reference).abs().max().item() < 1e-4


def test_scale_input_changes_the_prior(model):
    image = torch.rand(1, 3, 64, 64)
    a, _ = model.prior(image, torch.tensor([[2.0]]))
    b, _ = model.prior(image, torch.tensor([[6.5]]))
    assert (a - b).abs().max() > 1e-4
