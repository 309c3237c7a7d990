"""Adversarial fine-tuning of the diffusion UNet: sharper, more natural texture from few steps.

The UNet trained with the v-MSE loss alone predicts the conditional mean of the residual, so
its x0 predictions, and therefore the sampler's output, stay smooth (NIQE 5.6 on val against 2.9
for the HR images). Here the UNet (only; encoder, prior and decoder stay frozen) learns to make
its x0 prediction, gated, decoded and de-gridded exactly as the served pipeline does, look like HR
patches to a small patch discriminator, anchored by an L1 loss to the HR patch (optionally also
to its 4x4 cell means, the tone the LR image pins down).

Half of each batch starts where the sampler does (the prior's zero residual noised to
``start_timestep``, what the served path's first UNet call sees), half is the forward process
(the true residual noised to a random timestep at or below the start, with the v-MSE loss as
well); ``chain_consistency`` keeps longer chains from smoothing the first step's texture away.
The served weights: run I then N of the README's *Training* (NIQE 5.61 -> 4.65 on val at steps 1,
-0.20 dB PSNR-Y). Resumable like ``hndsr.training.trainer``: a checkpoint every ``checkpoint_seconds``, EMA weights
exported with it and kept per step (the strength is chosen afterwards).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from hndsr.inference.degrid import degridded_output
from hndsr.inference.diffusion import DDIMScheduler
from hndsr.inference.texture_gate import texture_gate
from hndsr.models.hndsr import HNDSR
from hndsr.training.budget import Budget
from hndsr.training.data import PatchBank, load_training_images
from hndsr.training.trainer import EMA, adamw, diffusion_inputs, learning_rate, prepare_run, probe_sets


@dataclass
class AdversarialConfig:
    init: str
    data: str
    out: str = "runs/adversarial"
    val: str | None = None
    steps: int = 20_000
    seconds: float = 0.0
    batch: int = 8
    patch: int = 128
    lr: float = 1e-4
    disc_lr: float = 1e-4
    adv_weight: float = 0.03
    """Weight of the generator's adversarial loss (the L1 loss has weight 1)."""
    v_weight: float = 0.1
    """Weight of the v-MSE loss on the forward-process half."""
    lowfreq_weight: float = 0.0
    """Weight of an extra L1 on 4x4 cell means (the tone the LR image pins down)."""
    consistency_weight: float = 0.0
    """Weight of ``chain_consistency`` (longer chains keep the first step's texture)."""
    gate: bool = True
    """Train through the weights' texture gate, as served (False: the residual ungated, as run 6 was)."""
    disc_warmup: int = 0
    """First steps train the discriminator alone: a fresh one gives the UNet no useful adversarial
    gradient, so the L1 anchor would wash the served texture out before it learns (runs 9-11)."""
    ema: float = 0.999
    checkpoint_seconds: float = 300.0
    report_seconds: float = 300.0
    seed: int = 0
    threads: int = 0


class PatchDiscriminator(nn.Module):
    """Spectrally normalised conv net giving one real/fake logit per ~30 px receptive field."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = (3, width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
            conv = nn.Conv2d(cin, cout, 4 if i else 3, stride=2 if i else 1, padding=1)
            layers += [spectral_norm(conv), nn.LeakyReLU(0.2)]
        layers.append(spectral_norm(nn.Conv2d(chans[-1], 1, 3, padding=1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image * 2 - 1)


def decode_served(model: HNDSR, latent: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The served output for a batch of latents: decoded, then de-gridded detail over the canvas."""
    return degridded_output(model.decoder(latent), up)


def predicted_sr(
    model: HNDSR,
    up: torch.Tensor,
    hr: torch.Tensor,
    scale: torch.Tensor,
    sched: DDIMScheduler,
    start: int,
    consistency: bool = True,
    gate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(SR decoded from the UNet's x0 predictions through the texture gate, as served; v-MSE loss
    on the forward-process half; consistency loss of the sampler-start half, or 0 without
    ``consistency``).

    First half of the batch: the sampler's start, the prior's zero residual noised to ``start``;
    second half: the true residual noised to a random timestep at or below it.
    """
    x0, z0, context = diffusion_inputs(model, up, hr, scale)
    context = context.detach()
    half = x0.shape[0] // 2
    noise = torch.randn_like(x0)
    t = torch.randint(0, start + 1, (x0.shape[0],), device=x0.device)
    t[:half] = start
    x_t = sched.add_noise(torch.cat([torch.zeros_like(x0[:half]), x0[half:]]), noise, t)
    v = model.unet(x_t, t.float(), z0, context)
    v_loss = F.mse_loss(v[half:], sched.velocity(x0[half:], noise[half:], t[half:]))
    x0_pred = sched.predicted_x0(v, x_t, t)
    chain = (
        chain_consistency(model, sched, x_t[:half], x0_pred[:half].detach(), z0[:half], context[:half], start)
        if consistency
        else torch.zeros((), device=x0.device)
    )
    weight = texture_gate(up, float(model.texture_floor), float(model.texture_gain), scale) if gate else 1.0
    return decode_served(model, z0 + weight * x0_pred / model.residual_scale, up), v_loss, chain


def chain_consistency(
    model: HNDSR,
    sched: DDIMScheduler,
    x_start: torch.Tensor,
    x0_first: torch.Tensor,
    z0: torch.Tensor,
    context: torch.Tensor,
    start: int,
) -> torch.Tensor:
    """MSE between the first step's x0 prediction and the one made from where a deterministic
    DDIM chain goes next with it (the same x0 and implied noise, at a random earlier timestep):
    zero when every step count of the sampler returns what one step does."""
    a_start = sched.alpha(start)
    eps = (x_start - a_start**0.5 * x0_first) / (1 - a_start) ** 0.5
    t = torch.randint(0, start, (x_start.shape[0],), device=x_start.device)
    x_t = sched.add_noise(x0_first, eps, t)
    v = model.unet(x_t, t.float(), z0, context)
    return F.mse_loss(sched.predicted_x0(v, x_t, t), x0_first)


@torch.no_grad()
def probe_scores(model: HNDSR, images: list[np.ndarray], steps: int = 1, scale: int = 4) -> dict[str, float]:
    """``hndsr eval``'s scores of the served path (``steps``) on whole images: the fine-tune's proxy."""
    from hndsr.evaluation.evaluate import MethodScores, load_pair, torch_upscaler
    from hndsr.evaluation.niqe import DEFAULT_PARAMS

    was_training = model.training
    upscale = torch_upscaler(model, scale, steps)
    scores = MethodScores()
    for im in images:
        pair = load_pair("probe", im, scale)
        scores.add(upscale(pair.lr, pair.hr.shape[:2]), pair.hr, scale, DEFAULT_PARAMS, 0.0)
    model.train(was_training)
    summary = scores.summary()
    return {k: round(summary[k], 3) for k in ("psnr_y", "ssim_y", "haarpsi", "niqe", "periodic_ratio")}


def adversarial(cfg: AdversarialConfig) -> Path:
    """Fine-tune (or resume); returns the path of the exported weights (EMA UNet, fp16)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = prepare_run(cfg.threads, cfg.seed)
    model = HNDSR.load(cfg.init, device)
    disc = PatchDiscriminator().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.unet.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    opt = adamw(params.values(), cfg.lr)
    disc_opt = adamw(disc.parameters(), cfg.disc_lr)
    ckpt_path = out / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    state = {"step": 0, "elapsed": 0.0}
    if ckpt:
        model.unet.load_state_dict(ckpt["unet"])
        disc.load_state_dict(ckpt["disc"])
        opt.load_state_dict(ckpt["optimizer"])
        disc_opt.load_state_dict(ckpt["disc_optimizer"])
        state = ckpt["state"]
    ema = EMA(params, cfg.ema, ckpt["ema"] if ckpt else None)
    images = load_training_images(cfg.data)
    bank = PatchBank(images, cfg.patch, device, seed=cfg.seed + state["step"], augment=True)
    probe, val = probe_sets(images, cfg.val)
    sched = DDIMScheduler()
    start = int(round(float(model.start_timestep)))
    weights_out = out / "hndsr.safetensors"

    def save() -> None:
        torch.save(
            {
                "unet": model.unet.state_dict(),
                "disc": disc.state_dict(),
                "optimizer": opt.state_dict(),
                "disc_optimizer": disc_opt.state_dict(),
                "ema": ema.state_dict(),
                "state": state,
            },
            ckpt_path,
        )
        with ema.applied():
            model.save(weights_out, extra={"adv_step": str(state["step"]), "adv_elapsed": f"{state['elapsed']:.1f}"})
        # Every export is kept: the fine-tune's strength is chosen afterwards (see the README).
        shutil.copyfile(weights_out, out / f"hndsr_step{state['step']:06d}.safetensors")

    def score(row: dict) -> None:
        with ema.applied():
            row["train"] = probe_scores(model, probe)
            if val:
                row["val"] = probe_scores(model, val)

    budget = Budget(
        state, cfg.steps, cfg.seconds, score, save, cfg.report_seconds, cfg.checkpoint_seconds, log=out / "log.jsonl"
    )
    if state["step"] == 0:
        budget.report({"step": 0})
    model.unet.train()
    while budget.active():
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg.lr, state["step"], budget.progress(), warmup=100)
        up, hr, scale = bank.batch(cfg.batch)
        warming = state["step"] < cfg.disc_warmup
        with torch.set_grad_enabled(not warming):
            consistent = cfg.consistency_weight > 0 and not warming
            sr, v_loss, consistency = predicted_sr(model, up, hr, scale, sched, start, consistent, cfg.gate)
            l1 = F.l1_loss(sr, hr) + cfg.lowfreq_weight * F.l1_loss(F.avg_pool2d(sr, 4), F.avg_pool2d(hr, 4))
            adv = F.softplus(-disc(sr)).mean()
        if not warming:
            loss = l1 + cfg.v_weight * v_loss + cfg.adv_weight * adv + cfg.consistency_weight * consistency
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
            opt.step()
            ema.update()
        disc_loss = F.softplus(-disc(hr)).mean() + F.softplus(disc(sr.detach())).mean()
        disc_opt.zero_grad(set_to_none=True)
        disc_loss.backward()
        disc_opt.step()
        losses = {"l1": l1, "v": v_loss, "adv": adv, "consistency": consistency, "disc": disc_loss}
        budget.tick({k: float(v.detach()) for k, v in losses.items()})
    budget.finish()
    return weights_out
