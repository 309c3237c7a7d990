"""Adversarial fine-tuning of the diffusion UNet: sharper, more natural texture from few steps.

The UNet trained with the v-MSE loss alone predicts the conditional mean of the residual, so
its x0 predictions, and therefore the sampler's output, stay smooth (NIQE 5.6 on val against 2.9
for the HR images). Here the UNet (only; encoder, prior and decoder stay frozen) learns to make
its x0 prediction, decoded and de-gridded exactly as the served pipeline does, look like HR
patches to a small patch discriminator, anchored by an L1 loss to the HR patch and to its 4x4
cell means (the tone the LR image pins down).

Each patch is scored twice along the sampler's chain (``chain_sr``): at its start (the prior's zero
residual noised to ``start_timestep``, what the served path's first UNet call sees) and at a random
earlier timestep from that prediction re-noised (what later calls of a longer chain see), so every
step count of the UI gets the same texture. Resumable like ``hndsr.train``: a checkpoint every
``checkpoint_seconds``, EMA weights exported with it.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from hndsr.budget import Budget
from hndsr.data import PatchBank, load_images
from hndsr.degrid import remove_grid_pattern
from hndsr.diffusion import DDIMScheduler
from hndsr.models.hndsr import HNDSR
from hndsr.train import EMA, learning_rate


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
    lr: float = 5e-5
    disc_lr: float = 1e-4
    adv_weight: float = 0.02
    """Weight of the generator's adversarial loss (the L1 loss has weight 1)."""
    feature_weight: float = 0.2
    """Weight of the discriminator feature-matching loss."""
    lowfreq_weight: float = 1.0
    """Weight of an extra L1 on 4x4 cell means (the content the LR image pins down: texture may vary, tone may not)."""
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

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each hidden layer, then the logits."""
        out, h = [], image * 2 - 1
        for layer in self.net:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                out.append(h)
        return [*out, h]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image)[-1]


def feature_matching(disc: PatchDiscriminator, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Generator's adversarial loss, L1 between the discriminator's hidden features of SR and HR).

    The feature term (pix2pixHD) is a perceptual loss learned on this data: no pretrained network
    is available offline here.
    """
    fake = disc.features(sr)
    with torch.no_grad():
        real = disc.features(hr)
    matching = sum(F.l1_loss(f, r) for f, r in zip(fake[:-1], real[:-1])) / (len(fake) - 1)
    return F.softplus(-fake[-1]).mean(), matching


def decode_served(model: HNDSR, latent: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The served output for a batch of latents: decoded, then de-gridded detail over the canvas."""
    detail = model.decoder(latent) - up
    return up + remove_grid_pattern(detail.flatten(0, 1)).view_as(detail)


CHAIN_LENGTHS = (2, 4, 8)
"""Step counts whose DDIM chains the second prediction of each batch is taken from."""


def chain_sr(
    model: HNDSR, up: torch.Tensor, scale: torch.Tensor, sched: DDIMScheduler, start: int, rng: random.Random
) -> torch.Tensor:
    """SR [2B, 3, H, W] decoded from the UNet's x0 predictions at two points of the served sampler's
    chain (eta 0) for the same patches: its first step (the prior's zero residual noised to
    ``start``), and step k of an n-step chain (n from ``CHAIN_LENGTHS``, k random, the steps before it
    run without gradients), so every step count of the UI learns from its own inputs."""
    with torch.no_grad():
        z0, context = model.prior(model.encoder(up), scale)
    batch = up.shape[0]
    x_start = sched.add_noise(torch.zeros_like(z0), torch.randn_like(z0), torch.full((batch,), start, device=up.device))

    def x0_at(sample: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = model.unet(sample, torch.full((batch,), float(t), device=up.device), z0, context)
        return v, sched.step(v, t, sample)[1]

    timesteps = sched.set_timesteps(rng.choice(CHAIN_LENGTHS), start=start)
    v, x0_first = x0_at(x_start, timesteps[0])
    sample = sched.step(v.detach(), timesteps[0], x_start)[0]
    k = rng.randrange(1, len(timesteps))
    with torch.no_grad():
        for t in timesteps[1:k]:
            sample = sched.step(x0_at(sample, t)[0], t, sample)[0]
    x0_later = x0_at(sample, timesteps[k])[1]
    latent = torch.cat([z0, z0]) + torch.cat([x0_first, x0_later]) / model.residual_scale
    return decode_served(model, latent, torch.cat([up, up]))


@torch.no_grad()
def probe_scores(model: HNDSR, images: list[np.ndarray], steps: int = 1, scale: int = 4) -> dict[str, float]:
    """``hndsr eval``'s scores of the served path (``steps``) on whole images: the fine-tune's proxy."""
    from hndsr.evaluate import MethodScores, load_pair, torch_upscaler
    from hndsr.niqe import DEFAULT_PARAMS

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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = HNDSR.load(cfg.init, device)
    disc = PatchDiscriminator().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    params = dict(model.unet.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, weight_decay=0.0, betas=(0.9, 0.99))
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
    images = load_images(cfg.data)
    bank = PatchBank(images, cfg.patch, device, seed=cfg.seed + state["step"], augment=True)
    probe = images[:: max(1, len(images) // 6)][:6]
    val = load_images(cfg.val)[:6] if cfg.val else []
    sched = DDIMScheduler()
    rng = random.Random(cfg.seed + state["step"])
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

    def report(row: dict) -> None:
        with ema.applied():
            row["train"] = probe_scores(model, probe)
            if val:
                row["val"] = probe_scores(model, val)
        print(json.dumps(row), flush=True)
        with (out / "log.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    if state["step"] == 0:
        report({"step": 0})
    model.unet.train()
    budget = Budget(state, cfg.steps, cfg.seconds, report, save, cfg.report_seconds, cfg.checkpoint_seconds)
    while budget.active():
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg.lr, state["step"], budget.progress(), warmup=100)
        up, hr, scale = bank.batch(cfg.batch)
        sr = chain_sr(model, up, scale, sched, start, rng)
        hr = torch.cat([hr, hr])
        l1 = F.l1_loss(sr, hr) + cfg.lowfreq_weight * F.l1_loss(F.avg_pool2d(sr, 4), F.avg_pool2d(hr, 4))
        adv, matching = feature_matching(disc, sr, hr)
        loss = l1 + cfg.adv_weight * adv + cfg.feature_weight * matching
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        ema.update()
        disc_loss = F.softplus(-disc(hr)).mean() + F.softplus(disc(sr.detach())).mean()
        disc_opt.zero_grad(set_to_none=True)
        disc_loss.backward()
        disc_opt.step()
        losses = {"l1": l1, "adv": adv, "match": matching, "disc": disc_loss}
        budget.tick({k: float(v.detach()) for k, v in losses.items()})
    budget.finish()
    return weights_out


if __name__ == "__main__":
    import typer

    def main(
        init: str = typer.Option("weights/hndsr.safetensors", help="trained weights to fine-tune the UNet of"),
        data: str = typer.Option(..., help="training images"),
        out: str = typer.Option("runs/adversarial", help="checkpoints, log and exported weights"),
        val: str | None = typer.Option(None, help="validation images (reported, not trained on)"),
        seconds: float = typer.Option(0.0, help="wall-time budget (0 = by steps)"),
        steps: int = typer.Option(20_000, help="training steps"),
        batch: int = typer.Option(8, help="patches per step (each scored at two timesteps of the chain)"),
        patch: int = typer.Option(128, help="HR patch side"),
        lr: float = typer.Option(5e-5, help="UNet peak learning rate"),
        adv_weight: float = typer.Option(0.02, help="weight of the adversarial loss"),
        lowfreq_weight: float = typer.Option(1.0, help="weight of the L1 on 4x4 cell means"),
        feature_weight: float = typer.Option(0.2, help="weight of the discriminator feature matching"),
        threads: int = typer.Option(0, help="CPU threads (0 = PyTorch's default)"),
    ) -> None:
        """Fine-tune the UNet with a patch discriminator beside L1 and v-MSE."""
        cfg = AdversarialConfig(
            init=init,
            data=data,
            out=out,
            val=val,
            seconds=seconds,
            steps=steps,
            batch=batch,
            patch=patch,
            lr=lr,
            adv_weight=adv_weight,
            lowfreq_weight=lowfreq_weight,
            feature_weight=feature_weight,
            threads=threads,
        )
        print(adversarial(cfg))

    typer.run(main)
