"""Two-phase training, resumable, on CPU or CUDA.

1. ``regression``: encoder, FNO prior and decoder together. The steps-0 output decoder(z0) is
   trained against HR (L1, then an MSE tail), the autoencoder reconstruction decoder(encoder(HR))
   alongside it, and z0 is pulled towards encoder(HR) so that the diffusion residual stays small.
2. ``degrid``: the FNO prior and the decoder (encoder frozen) with MSE plus a penalty on the error
   at the harmonics of the 4-pixel latent grid (``harmonic_error``). The latent holds one channel
   group per pixel phase of a 4x4 cell, and small per-phase differences in the prior's error leave
   a periodic grain that MSE hardly sees (a few spectral bins) but the eye and the periodic ratio do.
3. ``diffusion``: the regression stages are frozen (their EMA weights); the UNet learns v for the
   residual ``(encoder(HR) - z0) * residual_scale`` at timesteps below ``max_timestep``, and the
   FNO's context head is trained with it (it conditions the UNet).

Every trainable parameter has an EMA; the exported weights are the EMA ones. A checkpoint
(model, EMA, optimiser, progress) is written every ``checkpoint_seconds`` and at the end of each
phase; the safetensors weights carry the phase and step in their metadata, so training can also
resume from committed weights (``init``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from hndsr.evaluation.metrics import periodic_ratio, psnr_y
from hndsr.inference.diffusion import DDIMScheduler
from hndsr.inference.imaging import bicubic_downscale, load_images, to_tensor, upsample
from hndsr.models.hndsr import HNDSR
from hndsr.training.config import TrainConfig
from hndsr.training.data import PatchBank, load_training_images

PHASES = ("regression", "degrid", "diffusion")
LOG_FIELDS = [
    "phase",
    "step",
    "loss",
    "lr",
    "elapsed_s",
    "train_psnr_y",
    "val_psnr_y",
    "val_bicubic_psnr_y",
    "val_periodic",
]


def trainable(model: HNDSR, phase: str) -> dict[str, torch.nn.Parameter]:
    """The parameters a phase trains, by state-dict name."""
    if phase == "regression":
        prefixes = ("encoder.", "prior.", "decoder.")
        skip = ("prior.context_head.",)
    elif phase == "degrid":
        prefixes, skip = ("prior.", "decoder."), ("prior.context_head.",)
    else:
        prefixes = ("unet.", "prior.context_head.")
        skip = ()
    return {n: p for n, p in model.named_parameters() if n.startswith(prefixes) and not n.startswith(skip)}


def regression_loss(model: HNDSR, up: torch.Tensor, hr: torch.Tensor, scale: torch.Tensor, mse: bool) -> torch.Tensor:
    z_hr = model.encoder(hr)
    z0, _ = model.prior(model.encoder(up), scale)
    pixel = F.mse_loss if mse else F.l1_loss
    return pixel(model.decoder(z0), hr) + 0.5 * pixel(model.decoder(z_hr), hr) + 0.1 * F.mse_loss(z0, z_hr.detach())


def harmonic_error(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean power of the luminance error at the 4- and 2-pixel grid harmonics (3x3 bins around
    each, Hann window) divided by H*W: on the scale of the MSE (Parseval), so the ratio of the two
    says how concentrated the error is on the grid frequencies (1 = spread evenly)."""
    weights = torch.tensor([0.257, 0.504, 0.098], device=sr.device)
    err = torch.einsum("bchw,c->bhw", sr.float() - hr.float(), weights) / 0.859
    h, w = err.shape[-2:]
    window = torch.outer(
        torch.hann_window(h, periodic=False, device=sr.device), torch.hann_window(w, periodic=False, device=sr.device)
    )
    power = torch.fft.fft2(err * window).abs().pow(2) / (h * w)
    rows, cols = [], []
    for fy, fx in ((0, w // 4), (h // 4, 0), (h // 4, w // 4), (0, w // 2), (h // 2, 0)):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                rows.append((fy + dy) % h)
                cols.append((fx + dx) % w)
    return power[:, rows, cols].mean()


def degrid_loss(model: HNDSR, up: torch.Tensor, hr: torch.Tensor, scale: torch.Tensor, weight: float) -> torch.Tensor:
    with torch.no_grad():
        z_hr = model.encoder(hr)
        z_b = model.encoder(up)
    z0, _ = model.prior(z_b, scale)
    sr = model.decoder(z0)
    return F.mse_loss(sr, hr) + weight * harmonic_error(sr, hr) + 0.5 * F.mse_loss(model.decoder(z_hr), hr)


def diffusion_inputs(
    model: HNDSR, up: torch.Tensor, hr: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0 = scaled residual, z0, context) with the frozen regression stages; context keeps its grad."""
    with torch.no_grad():
        z_b = model.encoder(up)
        h = model.prior.features(z_b, scale)
        z0 = z_b + model.prior.delta_head(h)
        x0 = (model.encoder(hr) - z0) * model.residual_scale
    return x0, z0, model.prior.context_head(h)


def diffusion_loss(
    model: HNDSR, up: torch.Tensor, hr: torch.Tensor, scale: torch.Tensor, sched: DDIMScheduler, max_t: int
) -> torch.Tensor:
    x0, z0, context = diffusion_inputs(model, up, hr, scale)
    t = torch.randint(0, max_t, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    v = model.unet(sched.add_noise(x0, noise, t), t.float(), z0, context)
    return F.mse_loss(v.float(), sched.velocity(x0, noise, t))


@torch.no_grad()
def estimate_residual_scale(model: HNDSR, bank: PatchBank, batches: int = 8, size: int = 8) -> float:
    """1 / RMS of the latent residual encoder(HR) - z0, so the diffused signal has unit scale."""
    model.residual_scale.fill_(1.0)
    vals = [diffusion_inputs(model, *bank.batch(size))[0].pow(2).mean() for _ in range(batches)]
    return float(1.0 / torch.stack(vals).mean().sqrt())


@torch.no_grad()
def quick_psnr(
    model: HNDSR, images: list[np.ndarray], scale: float = 4.0, crop: int = 208
) -> tuple[float, float, float]:
    """Steps-0 and bicubic PSNR-Y at ``scale`` on centre crops (a fast proxy for ``hndsr eval``),
    and the median periodic ratio of the steps-0 crops."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sr_scores, bic_scores, periodic = [], [], []
    for im in images:
        side = min(crop, *im.shape[:2]) // 16 * 16
        y0, x0 = (im.shape[0] - side) // 2, (im.shape[1] - side) // 2
        hr = im[y0 : y0 + side, x0 : x0 + side]
        lr_side = int(side / scale)
        up = upsample(to_tensor(bicubic_downscale(hr, (lr_side, lr_side))), (side, side)).to(device)
        z0, _ = model.prior(model.encoder(up), torch.tensor([[scale]], device=device))
        sr = (model.decoder(z0)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        bic = (up[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        sr_scores.append(psnr_y(sr, hr, int(scale)))
        periodic.append(periodic_ratio(sr))
        bic_scores.append(psnr_y(bic, hr, int(scale)))
    model.train(was_training)
    return float(np.mean(sr_scores)), float(np.mean(bic_scores)), float(np.median(periodic))


class EMA:
    """Exponential moving average of named parameters (warm-up: decay min(d, (1+n)/(10+n)))."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, state: dict | None = None) -> None:
        self.params = params
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in params.items()}
        if state:
            self.updates = state["updates"]
            for n, v in state["shadow"].items():
                self.shadow[n].copy_(v)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        names = list(self.params)
        torch._foreach_lerp_([self.shadow[n] for n in names], [self.params[n].detach() for n in names], 1 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    @contextlib.contextmanager
    def applied(self):
        """Temporarily swap the EMA weights into the model."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])


def learning_rate(base: float, step: int, progress: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to 1% of ``base`` over the phase's progress."""
    return base * min(1.0, (step + 1) / warmup) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def prepare_run(threads: int, seed: int) -> torch.device:
    """Thread count, seeds and the device of a training run (CUDA when present, with its fast
    convolution and TF32 matmul settings)."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def probe_sets(images: list[np.ndarray], val: str | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images a run reports on: 6 spread over the training set, the first 6 of ``val``."""
    return images[:: max(1, len(images) // 6)][:6], load_images(val)[:6] if val else []


def adamw(params, lr: float) -> torch.optim.AdamW:
    """The optimiser of every training phase and fine-tune: AdamW, betas (0.9, 0.99), no decay."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))


class Trainer:
    """Holds the model, data and progress of one training run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = prepare_run(cfg.threads, cfg.seed)
        self.model = HNDSR(**(HNDSR.architecture_of(cfg.init) if cfg.init else {})).to(self.device)
        self.sched = DDIMScheduler()
        images = load_training_images(cfg.data)
        self.bank = PatchBank(images, cfg.patch, self.device, seed=cfg.seed, augment=cfg.augment)
        self.train_probe, self.val_images = probe_sets(images, cfg.val)
        self.ckpt_path = self.out / "checkpoint.pt"
        self.weights_out = Path(cfg.weights_out or self.out / "hndsr.safetensors")
        self.state = {"phase": PHASES[0], "step": 0, "elapsed": 0.0}
        self._resume_optimizer: dict | None = None
        self._resume_ema: dict | None = None
        self._resume()
        (self.out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def _resume(self) -> None:
        if self.ckpt_path.exists():
            ckpt = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
            self.model.load_state_dict(ckpt["model"])
            self.state = ckpt["state"]
            self._resume_optimizer, self._resume_ema = ckpt["optimizer"], ckpt["ema"]
            print(f"resumed from {self.ckpt_path}: {self.state}", flush=True)
        elif self.cfg.init:
            loaded = HNDSR.load(self.cfg.init, self.device)
            self.model.load_state_dict(loaded.state_dict())
            meta = HNDSR.metadata(self.cfg.init)
            if "train_phase" in meta:
                self.state = {
                    "phase": meta["train_phase"],
                    "step": int(meta["train_step"]),
                    "elapsed": float(meta["train_elapsed"]),
                }
            if self.cfg.restart_phase:
                self.state = {"phase": self.cfg.restart_phase, "step": 0, "elapsed": 0.0}
            print(f"initialised from {self.cfg.init}: {self.state}", flush=True)

    def _progress(self, phase: str) -> float:
        steps = getattr(self.cfg, f"{phase}_steps")
        seconds = getattr(self.cfg, f"{phase}_seconds")
        frac = self.state["step"] / max(steps, 1)
        if seconds > 0:
            frac = max(frac, self.state["elapsed"] / seconds)
        return frac

    def _save(self, opt: torch.optim.Optimizer, ema: EMA) -> None:
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": opt.state_dict(),
                "ema": ema.state_dict(),
                "state": self.state,
            },
            self.ckpt_path,
        )
        self.export_weights(ema)

    def export_weights(self, ema: EMA) -> None:
        extra = {
            "train_phase": self.state["phase"],
            "train_step": str(self.state["step"]),
            "train_elapsed": f"{self.state['elapsed']:.1f}",
            "train_device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
        }
        with ema.applied():
            self.model.save(self.weights_out, extra=extra)

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run(self) -> Path:
        log_path = self.out / "log.csv"
        new_log = not log_path.exists()
        with log_path.open("a", newline="") as log_file:
            log = csv.DictWriter(log_file, LOG_FIELDS)
            if new_log:
                log.writeheader()
            last = PHASES.index(self.cfg.stop_after) if self.cfg.stop_after else len(PHASES) - 1
            for phase in PHASES[PHASES.index(self.state["phase"]) : last + 1]:
                self._run_phase(phase, log, log_file)
        return self.weights_out

    def _base_lr(self, phase: str) -> float:
        return {"regression": self.cfg.lr, "diffusion": self.cfg.diffusion_lr, "degrid": self.cfg.degrid_lr}[phase]

    def _start_phase(self, phase: str) -> tuple[dict[str, torch.nn.Parameter], torch.optim.Optimizer, EMA]:
        cfg = self.cfg
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = trainable(self.model, phase)
        for p in params.values():
            p.requires_grad_(True)
        lr = self._base_lr(phase)
        opt = adamw(params.values(), lr)
        if self._resume_optimizer is not None:
            opt.load_state_dict(self._resume_optimizer)
        ema = EMA(params, cfg.ema, self._resume_ema)
        self._resume_optimizer = self._resume_ema = None
        if phase == "diffusion" and self.state["step"] == 0:
            # A UNet fine-tune (--init W --restart-phase diffusion) keeps the scale W's UNet learned.
            if not (cfg.init and cfg.restart_phase == "diffusion"):
                self.model.residual_scale.fill_(estimate_residual_scale(self.model, self.bank))
            self.model.start_timestep.fill_(float(cfg.start_timestep))
            print(f"residual_scale = {float(self.model.residual_scale):.4f}", flush=True)
        return params, opt, ema

    def _run_phase(self, phase: str, log: csv.DictWriter, log_file) -> None:
        cfg = self.cfg
        params, opt, ema = self._start_phase(phase)
        base_lr = self._base_lr(phase)
        self.model.train()
        t0 = time.time() - self.state["elapsed"]
        last_ckpt = last_eval = time.time()
        running: list[torch.Tensor] = []
        while self._progress(phase) < 1.0:
            step, progress = self.state["step"], self._progress(phase)
            lr = learning_rate(base_lr, step, progress)
            for g in opt.param_groups:
                g["lr"] = lr
            up, hr, scale = self.bank.batch(cfg.batch)
            with self._autocast():
                if phase == "regression":
                    loss = regression_loss(self.model, up, hr, scale, mse=progress >= 1 - cfg.mse_tail)
                elif phase == "degrid":
                    loss = degrid_loss(self.model, up, hr, scale, cfg.harmonic_weight)
                else:
                    loss = diffusion_loss(self.model, up, hr, scale, self.sched, cfg.max_timestep)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
            opt.step()
            ema.update()
            running.append(loss.detach())
            self.state["step"] += 1
            self.state["elapsed"] = time.time() - t0
            now = time.time()
            done = self._progress(phase) >= 1.0
            if self.state["step"] % 100 == 0 or done:
                row = {
                    "phase": phase,
                    "step": self.state["step"],
                    "loss": float(torch.stack(running).mean()),
                    "lr": f"{lr:.3g}",
                    "elapsed_s": round(self.state["elapsed"], 1),
                }
                running = []
                if phase != "diffusion" and (now - last_eval >= cfg.eval_seconds or done):
                    last_eval = now
                    with ema.applied():
                        row["train_psnr_y"] = round(quick_psnr(self.model, self.train_probe)[0], 3)
                        if self.val_images:
                            sr, bic, per = quick_psnr(self.model, self.val_images)
                            row["val_psnr_y"], row["val_bicubic_psnr_y"] = round(sr, 3), round(bic, 3)
                            row["val_periodic"] = round(per, 1)
                log.writerow(row)
                log_file.flush()
                print(json.dumps(row), flush=True)
            if now - last_ckpt >= cfg.checkpoint_seconds or done:
                last_ckpt = now
                self._save(opt, ema)
        # Next phase starts from this phase's EMA weights.
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ema.shadow[n])
        nxt = PHASES.index(phase) + 1
        if nxt < len(PHASES):
            self.state = {"phase": PHASES[nxt], "step": 0, "elapsed": 0.0}
            fresh = EMA(trainable(self.model, PHASES[nxt]), cfg.ema)
            torch.save(
                {"model": self.model.state_dict(), "optimizer": None, "ema": None, "state": self.state}, self.ckpt_path
            )
            self.export_weights(fresh)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) both phases; returns the path of the exported (EMA, fp16) weights."""
    return Trainer(cfg).run()


def plot_log(log_csv: str | Path, out_png: str | Path) -> None:
    """Training curves (loss per phase, quick PSNR-Y) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(log_csv).open() as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, len(PHASES) + 1, figsize=(18, 3.5))
    for ax, phase in zip(axes, PHASES):
        pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["phase"] == phase]
        if pts:
            ax.plot(*zip(*pts))
        ax.set_title(f"{phase} loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    for key, label in (("train_psnr_y", "train crops"), ("val_psnr_y", "val crops"), ("val_bicubic_psnr_y", "bicubic")):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r["phase"] == "regression" and r.get(key)]
        if pts:
            axes[-1].plot(*zip(*pts), label=label)
    axes[-1].legend()
    axes[-1].set_title("steps-0 PSNR-Y 4x (centre crops, EMA)")
    axes[-1].set_xlabel("regression step")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
