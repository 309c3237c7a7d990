"""Staged training: autoencoder -> FNO prior (+ decoder fine-tune) -> residual diffusion UNet."""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from hndsr.config import TrainConfig
from hndsr.data import PatchSampler, load_images
from hndsr.diffusion import DDIMScheduler
from hndsr.image_io import bicubic_downscale
from hndsr.imaging import to_tensor, upsample
from hndsr.metrics import psnr_y
from hndsr.models.hndsr import HNDSR

STAGE_ORDER = ("autoencoder", "prior", "unet")


def _steps(cfg: TrainConfig, stage: str) -> int:
    return {"autoencoder": cfg.ae_steps, "prior": cfg.prior_steps, "unet": cfg.unet_steps}[stage]


def _stage_params(model: HNDSR, stage: str) -> list[torch.nn.Parameter]:
    if stage == "autoencoder":
        return [*model.encoder.parameters(), *model.decoder.parameters()]
    if stage == "prior":
        return [*model.prior.parameters(), *model.decoder.parameters()]
    return list(model.unet.parameters())


def prior_latent(model: HNDSR, up: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Structural prior on the latent grid: encoder(bicubic) + FNO delta; also returns the context."""
    delta, context = model.prior(up, scale)
    return model.encoder(up) + delta, context


def _loss(
    model: HNDSR, stage: str, up: torch.Tensor, hr: torch.Tensor, scale: torch.Tensor, sched: DDIMScheduler
) -> torch.Tensor:
    if stage == "autoencoder":
        z = model.encoder(hr)
        return F.l1_loss(model.decoder(z), hr) + 1e-4 * z.pow(2).mean()
    if stage == "prior":
        with torch.no_grad():
            z_hr = model.encoder(hr)
        z_prior, _ = prior_latent(model, up, scale)
        return (
            F.l1_loss(model.decoder(z_prior), hr)
            + 0.5 * F.l1_loss(model.decoder(z_hr), hr)
            + 0.01 * F.mse_loss(z_prior, z_hr)
        )
    with torch.no_grad():
        z_prior, context = prior_latent(model, up, scale)
        x0 = (model.encoder(hr) - z_prior) * model.residual_scale
    t = torch.randint(0, sched.num_train_timesteps, (x0.shape[0],))
    noise = torch.randn_like(x0)
    v = model.unet(sched.add_noise(x0, noise, t), t.float(), context)
    return F.mse_loss(v, sched.velocity(x0, noise, t))


@torch.no_grad()
def _estimate_residual_scale(model: HNDSR, sampler: PatchSampler, batches: int = 8) -> float:
    vals = []
    for _ in range(batches):
        up, hr, scale = sampler.batch(8)
        z_prior, _ = prior_latent(model, up, scale)
        vals.append((model.encoder(hr) - z_prior).pow(2).mean())
    return float(1.0 / torch.stack(vals).mean().sqrt())


@torch.no_grad()
def quick_val(model: HNDSR, images: list[np.ndarray], scale: float = 4.0, crop: int = 256) -> dict[str, float]:
    """Deterministic-path PSNR-Y on centre crops (a fast proxy for the full eval)."""
    model.eval()
    sr_scores, bic_scores = [], []
    for im in images:
        crop = min(crop, *im.shape[:2]) // 16 * 16
        y0, x0 = (im.shape[0] - crop) // 2, (im.shape[1] - crop) // 2
        hr = im[y0 : y0 + crop, x0 : x0 + crop]
        side = int(crop / scale)
        up = upsample(to_tensor(bicubic_downscale(hr, (side, side))), (crop, crop))
        z, _ = prior_latent(model, up, torch.tensor([[scale]]))
        sr = (model.decoder(z)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        bic = (up[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        sr_scores.append(psnr_y(sr, hr, int(scale)))
        bic_scores.append(psnr_y(bic, hr, int(scale)))
    model.train()
    return {"val_psnr_y": float(np.mean(sr_scores)), "val_bicubic_psnr_y": float(np.mean(bic_scores))}


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) all stages; returns the path of the exported safetensors weights."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = HNDSR().to(device)
    sched = DDIMScheduler()
    images = load_images(cfg.data)
    val_images = load_images(cfg.val)[:6] if cfg.val else []
    ckpt_path = out / "checkpoint.pt"
    state = {"stage": STAGE_ORDER[0], "step": 0, "elapsed": 0.0}
    optimizer_state = None
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        state = ckpt["state"]
        optimizer_state = ckpt["optimizer"]
        print(f"resumed {state}")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_path = out / "log.csv"
    new_log = not log_path.exists()
    log_file = log_path.open("a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["stage", "step", "loss", "elapsed_s", "val_psnr_y", "val_bicubic_psnr_y"])
    weights_out = Path(cfg.weights_out or out / "hndsr.safetensors")

    for stage in STAGE_ORDER[STAGE_ORDER.index(state["stage"]) :]:
        total = _steps(cfg, stage)
        patch = cfg.prior_patch if stage == "prior" else cfg.patch
        sampler = PatchSampler(images, patch, seed=cfg.seed + STAGE_ORDER.index(stage) * 1000 + state["step"])
        for p in model.parameters():
            p.requires_grad_(False)
        params = _stage_params(model, stage)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)
            optimizer_state = None
        if stage == "unet" and state["step"] == 0:
            model.residual_scale.fill_(_estimate_residual_scale(model, sampler))
            print(f"residual_scale = {float(model.residual_scale):.3f}")
        batch = cfg.batch if patch <= 128 else max(2, cfg.batch * 128 * 128 // (patch * patch))
        model.train()
        t0 = time.time() - state["elapsed"]
        running = []
        while state["step"] < total:
            lr_now = cfg.lr * min(1.0, (state["step"] + 1) / 100) * (0.1 + 0.9 * (1 - state["step"] / total))
            for g in opt.param_groups:
                g["lr"] = lr_now
            up, hr, scale = (t.to(device) for t in sampler.batch(batch))
            loss = _loss(model, stage, up, hr, scale, sched)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            running.append(loss.item())
            state["step"] += 1
            state["elapsed"] = time.time() - t0
            step = state["step"]
            if step % 50 == 0 or step == total:
                row = [stage, step, float(np.mean(running)), round(state["elapsed"], 1), "", ""]
                if val_images and stage != "unet" and (step % cfg.eval_every == 0 or step == total):
                    v = quick_val(model, val_images)
                    row[4:] = [round(v["val_psnr_y"], 3), round(v["val_bicubic_psnr_y"], 3)]
                log.writerow(row)
                log_file.flush()
                print(*row, flush=True)
                running = []
            if step % cfg.checkpoint_every == 0 or step == total:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, ckpt_path)
                model.save(weights_out)
        nxt = STAGE_ORDER.index(stage) + 1
        if nxt < len(STAGE_ORDER):
            state = {"stage": STAGE_ORDER[nxt], "step": 0, "elapsed": 0.0}
            torch.save({"model": model.state_dict(), "optimizer": None, "state": state}, ckpt_path)
    log_file.close()
    model.save(weights_out)
    return weights_out


def plot_log(log_csv: str | Path, out_png: str | Path) -> None:
    """Training curves (loss per stage, validation PSNR-Y) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(log_csv).open() as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, len(STAGE_ORDER) + 1, figsize=(16, 3.5))
    for ax, stage in zip(axes, STAGE_ORDER):
        pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["stage"] == stage]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_title(f"{stage} loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    val = [(i, float(r["val_psnr_y"]), float(r["val_bicubic_psnr_y"])) for i, r in enumerate(rows) if r["val_psnr_y"]]
    if val:
        idx, sr, bic = zip(*val)
        axes[-1].plot(idx, sr, label="HNDSR steps=0")
        axes[-1].plot(idx, bic, label="bicubic")
        axes[-1].legend()
    axes[-1].set_title("val PSNR-Y 4x (centre crops)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
