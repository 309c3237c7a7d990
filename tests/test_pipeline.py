import pytest
import torch

from hndsr.config import Limits
from hndsr.inference.pipeline import (
    InvalidRequest,
    Sampling,
    SRParams,
    TorchRunner,
    canvas_plan,
    model_scale,
    super_resolve,
    validate,
)
from hndsr_client.image_io import read_rgb

from .conftest import FIXTURES


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.from_numpy(read_rgb(FIXTURES / "teak_0.png")[:40, :52].copy())


def run(model, image, **kw):
    return super_resolve(image, SRParams(**kw), TorchRunner(model), SAMPLING)


SAMPLING = Sampling(residual_scale=1.0, start_timestep=400)


@pytest.mark.parametrize("scale", [2.0, 3.3, 4.0])
def test_output_shape_is_scale_times_input(model, image, scale):
    out = run(model, image, scale=scale, steps=0)
    assert out.image.dtype == torch.uint8
    assert tuple(out.image.shape) == (round(40 * scale), round(52 * scale), 3)
    computed = canvas_plan(round(40 * model_scale(scale)), round(52 * model_scale(scale)))
    assert out.info["steps"] == 0 and out.info["tiles"] == computed.count


def test_scales_below_the_model_scale_are_the_model_scale_resized(model, image):
    """2x is computed at 4x (the model's latent grid then matches the LR pixels) and resized down."""
    two = run(model, image, scale=2.0, steps=2, seed=3).image
    four = run(model, image, scale=4.0, steps=2, seed=3).image.permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(four, size=(80, 104), mode="bicubic", antialias=True)
    assert (two.permute(2, 0, 1)[None].float() - resized.clamp(0, 255)).abs().max() <= 1.0


def test_same_seed_same_bytes_other_seed_differs(model, image):
    a = run(model, image, steps=3, seed=7).image
    b = run(model, image, steps=3, seed=7).image
    c = run(model, image, steps=3, seed=8).image
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zero_steps_is_deterministic_and_ignores_seed(model, image):
    assert torch.equal(run(model, image, steps=0, seed=1).image, run(model, image, steps=0, seed=2).image)


def test_cancellation_stops_the_loop(model, image):
    from hndsr.inference.pipeline import Cancelled

    calls = []
    with pytest.raises(Cancelled):
        super_resolve(
            image,
            SRParams(steps=10),
            TorchRunner(model),
            SAMPLING,
            is_cancelled=lambda: len(calls) >= 2,
            on_step=lambda i, n: calls.append(i),
        )
    assert calls == [1, 2]


def test_dihedral_views_invert_and_the_first_four_keep_the_shape():
    from hndsr.inference.imaging import dihedral_view

    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    views = [dihedral_view(x, i) for i in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8, "eight distinct views"
    assert all(v.shape == x.shape for v in views[:4]) and all(v.shape == (2, 5, 3) for v in views[4:])
    for i, v in enumerate(views):
        assert torch.equal(dihedral_view(v, i, inverse=True), x)


def test_full_self_ensemble_is_equivariant(model, image):
    """Averaging all eight views makes the output commute with flips and transposes, which the
    (random) model alone does not: the ensemble really runs and inverts every view."""
    mirrored = image.flip(1)
    transposed = image.transpose(0, 1)
    plain = run(model, image, scale=2.0, steps=0).image.int()
    assert (run(model, mirrored, scale=2.0, steps=0).image.flip(1).int() - plain).abs().max() > 2
    full = run(model, image, scale=2.0, steps=0, ensemble=8)
    assert full.info["ensemble"] == 8 and full.info["tiles"] == 8 * canvas_plan(80, 104).count
    for other, undo in ((mirrored, lambda y: y.flip(1)), (transposed, lambda y: y.transpose(0, 1))):
        again = undo(run(model, other, scale=2.0, steps=0, ensemble=8).image)
        assert (again.int() - full.image.int()).abs().max() <= 1  # float summation order only


def test_ensemble_of_two_is_the_mean_of_the_view_and_its_mirror(model, image):
    plain = run(model, image, scale=2.0, steps=2, seed=3).image.float()
    mirror = run(model, image.flip(1), scale=2.0, steps=2, seed=3).image.flip(1).float()
    pair = run(model, image, scale=2.0, steps=2, seed=3, ensemble=2).image.float()
    assert (pair - (plain + mirror) / 2).abs().max() <= 1  # each view was rounded to uint8 here
    assert (pair - plain).abs().max() > 1


def test_progress_counts_the_steps_of_every_view(model, image):
    calls = []
    super_resolve(
        image, SRParams(steps=2, ensemble=3), TorchRunner(model), SAMPLING, on_step=lambda i, n: calls.append((i, n))
    )
    assert calls == [(i, 6) for i in range(1, 7)]


@pytest.mark.parametrize(
    ("shape", "dtype", "params", "field"),
    [
        ((10, 10, 3), "float32", SRParams(), "IMAGE must be UINT8"),
        ((10, 10), "uint8", SRParams(), "rank 3"),
        ((10, 10, 4), "uint8", SRParams(), "3 channels"),
        ((4, 10, 3), "uint8", SRParams(), ">= 8 pixels"),
        ((10, 10, 3), "uint8", SRParams(scale=9.0), "SCALE must be in [2, 8]"),
        ((10, 10, 3), "uint8", SRParams(scale=1.0), "SCALE must be in [2, 8]"),
        ((10, 10, 3), "uint8", SRParams(steps=-1), "STEPS must be in [0, 50]"),
        ((10, 10, 3), "uint8", SRParams(steps=51), "STEPS must be in [0, 50]"),
        ((10, 10, 3), "uint8", SRParams(eta=2.0), "ETA must be in [0, 1]"),
        ((1200, 1200, 3), "uint8", SRParams(scale=4.0), "exceeds the limit of 16000000 output pixels"),
        ((1500, 1500, 3), "uint8", SRParams(scale=2.0), "SCALE 2 is computed at 4x and resized"),
    ],
)
def test_validation_names_field_and_limit(shape, dtype, params, field):
    with pytest.raises(InvalidRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate(shape, dtype, params, Limits())


def test_validation_accepts_good_request():
    validate((100, 100, 3), "uint8", SRParams(scale=8.0, steps=50, eta=1.0), Limits())
