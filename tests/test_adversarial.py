"""The adversarial UNet fine-tune: decodes what the served path decodes, trains only the UNet,
runs, resumes and exports loadable weights."""

from __future__ import annotations

import json

import torch

from hndsr.inference.degrid import remove_grid_pattern
from hndsr.models.hndsr import HNDSR
from hndsr.training.adversarial import AdversarialConfig, PatchDiscriminator, adversarial, decode_served

from .conftest import FIXTURES, random_model


@torch.no_grad()
def test_decode_served_degrids_each_image_like_the_pipeline():
    model = random_model()
    g = torch.Generator().manual_seed(0)
    latent, up = torch.randn(2, 48, 16, 16, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    got = decode_served(model, latent, up)
    for i in range(2):
        want = up[i] + remove_grid_pattern(model.decoder(latent[i : i + 1])[0] - up[i])
        torch.testing.assert_close(got[i], want, atol=1e-6, rtol=1e-5)


def test_discriminator_scores_patches():
    logits = PatchDiscriminator(width=8)(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 8, 8)


def test_fine_tune_trains_only_the_unet_and_resumes(tmp_path):
    init = tmp_path / "init.safetensors"
    start = random_model()
    start.start_timestep.fill_(149.0)
    start.save(init)
    cfg = AdversarialConfig(
        init=str(init),
        data=str(FIXTURES / "train"),
        out=str(tmp_path / "run"),
        val=str(FIXTURES),
        steps=3,
        batch=2,
        patch=64,
        threads=1,
        consistency_weight=0.1,
    )
    weights = adversarial(cfg)
    tuned, base = HNDSR.load(weights), HNDSR.load(init)
    assert HNDSR.metadata(weights)["adv_step"] == "3"
    for stage in ("encoder", "prior", "decoder"):
        torch.testing.assert_close(getattr(tuned, stage).state_dict(), getattr(base, stage).state_dict())
    delta = max((a - b).abs().max() for a, b in zip(tuned.unet.parameters(), base.unet.parameters()))
    assert 0 < delta < 0.05
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 3] and rows[0]["val"]["niqe"] > 0
    assert rows[1]["consistency"] > 0 and rows[1]["adv"] > 0  # every loss term ran
    cfg.steps = 5  # resume from the checkpoint
    adversarial(cfg)
    assert HNDSR.metadata(weights)["adv_step"] == "5"


def test_chain_consistency_is_zero_only_for_a_self_consistent_unet():
    """A UNet that predicts the same x0 from any point of the chain scores 0; one that does not, > 0."""
    from types import SimpleNamespace

    from hndsr.inference.diffusion import DDIMScheduler
    from hndsr.training.adversarial import chain_consistency

    sched = DDIMScheduler()
    g = torch.Generator().manual_seed(0)
    target, other = torch.randn(2, 48, 8, 8, generator=g), torch.randn(2, 48, 8, 8, generator=g)
    z0, context = torch.zeros(2, 48, 8, 8), torch.zeros(2, 16, 8, 8)

    def unet_predicting(x0):
        def unet(x_t, t, prior, ctx):
            a = sched.alphas_cumprod[t.long()].float().view(-1, 1, 1, 1)
            return (a.sqrt() * x_t - x0) / (1 - a).sqrt()  # v whose x0 prediction is x0

        return SimpleNamespace(unet=unet)

    x_start = sched.add_noise(torch.zeros_like(target), torch.randn(2, 48, 8, 8, generator=g), torch.tensor([149, 149]))
    same = chain_consistency(unet_predicting(target), sched, x_start, target, z0, context, 149)
    assert float(same) < 1e-8
    differs = chain_consistency(unet_predicting(other), sched, x_start, target, z0, context, 149)
    assert float(differs) > 0.5


def test_discriminator_warm_up_leaves_the_unet_alone(tmp_path):
    """During ``disc_warmup`` steps only the discriminator learns: the exported UNet is the initial one."""
    init = tmp_path / "init.safetensors"
    random_model().save(init)
    cfg = AdversarialConfig(
        init=str(init), data=str(FIXTURES / "train"), out=str(tmp_path / "run"), steps=2, batch=2, patch=64
    )
    cfg.threads, cfg.disc_warmup, cfg.gate = 1, 2, False
    tuned, base = HNDSR.load(adversarial(cfg)), HNDSR.load(init)
    torch.testing.assert_close(tuned.unet.state_dict(), base.unet.state_dict())
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["disc_optimizer"]["state"] and not checkpoint["optimizer"]["state"]  # only D stepped
