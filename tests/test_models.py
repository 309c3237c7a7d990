import pytest
import torch

from hndsr.config import CONTEXT_CHANNELS, LATENT_CHANNELS
from hndsr.models.spectral import SpectralConv2d


def test_stage_shapes(model):
    image = torch.rand(2, 3, 64, 96)
    z = model.encoder(image)
    assert z.shape == (2, LATENT_CHANNELS, 16, 24)
    z0, context = model.prior(z, torch.tensor([[2.5], [7.0]]))
    assert z0.shape == z.shape and context.shape == (2, CONTEXT_CHANNELS, 16, 24)
    assert model.unet(z, torch.tensor([10.0, 900.0]), z0, context).shape == z.shape
    assert model.decoder(z).shape == image.shape


def test_parameter_counts_are_the_documented_ones(model):
    # The README quotes these numbers; a change of architecture must update both.
    assert model.parameter_counts() == {"encoder": 85_488, "prior": 1_322_176, "unet": 683_280, "decoder": 85_488}


def test_the_unet_sees_the_prior(model):
    z = torch.randn(1, LATENT_CHANNELS, 16, 16)
    ctx = torch.randn(1, CONTEXT_CHANNELS, 16, 16)
    t = torch.tensor([100.0])
    assert (model.unet(z, t, z, ctx) - model.unet(z, t, z + 1, ctx)).abs().max() > 1e-4


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (17, 20), (24, 13)])
def test_spectral_conv_matches_torch_fft(size):
    torch.manual_seed(0)
    layer = SpectralConv2d(5, 7, modes=6)
    x = torch.randn(3, 5, *size)
    reference = layer.forward_fft(x)
    assert reference.abs().max() > 1e-3  # the comparison is not trivially zero
    assert (layer(x) - reference).abs().max().item() < 1e-4


def test_scale_input_changes_the_prior(model):
    latent = model.encoder(torch.rand(1, 3, 64, 64))
    a, _ = model.prior(latent, torch.tensor([[2.0]]))
    b, _ = model.prior(latent, torch.tensor([[6.5]]))
    assert (a - b).abs().max() > 1e-4


def test_encoder_packing_convolution_is_pixel_unshuffle_exactly():
    from torch.nn import functional as F

    from hndsr.models.autoencoder import packing_kernel

    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(F.conv2d(x, packing_kernel(), stride=4), F.pixel_unshuffle(x, 4))
