import pytest
import torch

from hndsr.inference.tiling import TilePlan, tile_starts


def test_tile_starts_cover_and_pin_last():
    assert tile_starts(256, 256, 224) == [0]
    starts = tile_starts(1000, 256, 224)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 224 for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError):
        tile_starts(100, 256, 224)


@pytest.mark.parametrize("shape", [(256, 256), (700, 1100), (300, 260)])
def test_constant_image_reproduced_exactly(shape):
    h, w = (-(-s // 4) * 4 for s in shape)
    plan = TilePlan.create(h, w, 256, 32, align=4)
    canvas = torch.full((3, h, w), 0.37, dtype=torch.float64)
    out = plan.blend(plan.split(canvas))
    assert out.shape == canvas.shape
    assert (out - canvas).abs().max().item() < 1e-12  # borders included: no darkening


def test_split_blend_round_trip_and_latent_plan():
    torch.manual_seed(0)
    plan = TilePlan.create(512, 736, 256, 32, align=4)
    canvas = torch.rand(2, 512, 736, dtype=torch.float64)
    torch.testing.assert_close(plan.blend(plan.split(canvas)), canvas)
    latent = plan.downscaled(4)
    assert latent.tile == 64 and latent.count == plan.count
    assert latent.ys == [y // 4 for y in plan.ys]


def test_blend_leaves_no_seam():
    """Tiles that disagree by a constant offset blend smoothly (no step at tile borders)."""
    plan = TilePlan.create(480, 480, 256, 32, align=4)
    canvas = torch.zeros(1, 480, 480, dtype=torch.float64)
    tiles = plan.split(canvas)
    tiles += torch.arange(plan.count, dtype=torch.float64).view(-1, 1, 1, 1)  # offsets 0..3
    out = plan.blend(tiles)[0]
    jump = max(out.diff(dim=0).abs().max().item(), out.diff(dim=1).abs().max().item())
    # A hard seam would jump by up to 2; the Hann ramp spreads it over the overlap.
    assert jump < 0.15
    # Away from overlaps each tile's own value is kept.
    assert out[10, 10].item() == 0.0 and out[-10, -10].item() == plan.count - 1
