"""Make the FNO prior narrower: structured pruning of its channels, then distillation.

The prior is the steps-0 path's largest cost (its 3x3 convolutions scale with width squared).
A narrower prior is cut out of the trained one (``prune_prior``: the residual-stream and the
per-block hidden channels with the most activation energy, measured on training crops), then
trained to reproduce the wide prior's two outputs, the latent prior z0 and the UNet's context
(``distill``), so the encoder, decoder and UNet keep working with it unchanged. Resumable
like ``hndsr.training.trainer``: a checkpoint every ``checkpoint_seconds``, EMA weights exported with it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from hndsr.config import TILE
from hndsr.models.fno import FNOPrior
from hndsr.models.hndsr import HNDSR
from hndsr.training.budget import Budget
from hndsr.training.data import PatchBank, load_training_images
from hndsr.training.trainer import EMA, adamw, learning_rate, prepare_run, probe_sets, quick_psnr


@dataclass
class DistillConfig:
    teacher: str
    data: str
    out: str = "runs/distill"
    val: str | None = None
    width: int = 48
    hidden: int = 32
    steps: int = 20_000
    seconds: float = 0.0
    batch: int = 8
    patch: int = TILE
    lr: float = 3e-4
    ema: float = 0.999
    context_weight: float = 0.5
    gt_weight: float = 0.0
    """Weight of an L1 loss between the decoded student prior and the HR patch (0 = pure distillation)."""
    init_student: str | None = None
    """Start from the (narrow) prior in these weights instead of pruning the teacher's; the
    exported file is then these weights with the trained prior (the other stages kept)."""
    scales: tuple[float, ...] = ()
    """Draw each batch's scale from these (repeat one to weight it); () = the training mix."""
    checkpoint_seconds: float = 600.0
    seed: int = 0
    threads: int = 0


@torch.no_grad()
def channel_energy(prior: FNOPrior, latents: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean squared activation per channel of the residual stream (summed over the block inputs
    and the trunk output) and of each block's hidden layer (weighted by the norm of the output
    convolution that reads it)."""
    device = prior.lift.weight.device
    stream = torch.zeros(prior.lift.out_channels, device=device)
    hidden = [torch.zeros(block.local.out_channels, device=device) for block in prior.blocks]
    for latent, scale in latents:
        emb = prior.embedding(scale)
        h = prior.lift(latent)
        for i, block in enumerate(prior.blocks):
            stream += h.pow(2).mean((0, 2, 3))
            a = block.hidden(h, emb)
            hidden[i] += a.pow(2).mean((0, 2, 3)) * block.out.weight.pow(2).sum((0, 2, 3))
            h = h + block.out(a)
        stream += F.gelu(h).pow(2).mean((0, 2, 3))
    return {"stream": stream, **{f"hidden{i}": v for i, v in enumerate(hidden)}}


def _top(energy: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(energy, k).indices).values


@torch.no_grad()
def prune_prior(teacher: FNOPrior, width: int, hidden: int, energy: dict[str, torch.Tensor]) -> FNOPrior:
    """A FNOPrior with ``width`` residual and ``hidden`` per-block channels, holding the teacher's
    weights on its most active channels."""
    modes = teacher.blocks[0].spectral.modes
    student = FNOPrior(width=width, modes=modes, depth=len(teacher.blocks), emb_dim=teacher.emb_dim, hidden=hidden)
    student.scale_mlp.load_state_dict(teacher.scale_mlp.state_dict())
    s = _top(energy["stream"], width)
    student.lift.weight.copy_(teacher.lift.weight[s])
    student.lift.bias.copy_(teacher.lift.bias[s])
    wide = teacher.lift.out_channels
    for i, (tb, sb) in enumerate(zip(teacher.blocks, student.blocks)):
        h = _top(energy[f"hidden{i}"], hidden)
        sb.spectral.weight_re.copy_(tb.spectral.weight_re[s][:, h])
        sb.spectral.weight_im.copy_(tb.spectral.weight_im[s][:, h])
        sb.local.weight.copy_(tb.local.weight[h][:, s])
        sb.local.bias.copy_(tb.local.bias[h])
        rows = torch.cat([h, h + wide])
        sb.film.weight.copy_(tb.film.weight[rows])
        sb.film.bias.copy_(tb.film.bias[rows])
        sb.out.weight.copy_(tb.out.weight[s][:, h])
        sb.out.bias.copy_(tb.out.bias[s])
    for name in ("delta_head", "context_head"):
        getattr(student, name).weight.copy_(getattr(teacher, name).weight[:, s])
        getattr(student, name).bias.copy_(getattr(teacher, name).bias)
    return student


def distill_loss(
    teacher: HNDSR,
    student: FNOPrior,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    context_weight: float,
    gt_weight: float = 0.0,
) -> torch.Tensor:
    """L1 to the teacher's z0 and context, plus (``gt_weight``) L1 of the decoded z0 to HR."""
    up, hr, scale = batch
    with torch.no_grad():
        latent = teacher.encoder(up)
        z0, context = teacher.prior(latent, scale)
    s_z0, s_context = student(latent, scale)
    loss = F.l1_loss(s_z0, z0) + context_weight * F.l1_loss(s_context, context)
    if gt_weight:
        loss = loss + gt_weight * F.l1_loss(teacher.decoder(s_z0), hr)
    return loss


def distill(cfg: DistillConfig) -> Path:
    """Prune (or resume) and distill; returns the path of the exported weights (the teacher's
    file with the student prior, EMA, fp16)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = prepare_run(cfg.threads, cfg.seed)
    teacher = HNDSR.load(cfg.teacher, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    images = load_training_images(cfg.data)
    bank = PatchBank(images, cfg.patch, device, seed=cfg.seed, augment=True, scales=cfg.scales)
    probe, val = probe_sets(images, cfg.val)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        student = FNOPrior(width=cfg.width, hidden=cfg.hidden)
        student.load_state_dict(ckpt["student"])
        student.to(device)
        state = ckpt["state"]
    elif cfg.init_student:
        student = HNDSR.load(cfg.init_student, device).prior
        state = {"step": 0, "elapsed": 0.0}
        ckpt = None
    else:
        energy = channel_energy(teacher.prior, [teacher_batch(teacher, bank) for _ in range(8)])
        student = prune_prior(teacher.prior, cfg.width, cfg.hidden, energy).to(device)
        ckpt, state = None, {"step": 0, "elapsed": 0.0}
    params = dict(student.named_parameters())
    opt = adamw(params.values(), cfg.lr)
    ema = EMA(params, cfg.ema, ckpt["ema"] if ckpt else None)
    if ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    weights_out = out / "hndsr.safetensors"
    # The served model: the other stages (the initial file's, else the teacher's) around the
    # student (shared, so the EMA weights swapped into the student are what gets saved and scored).
    model = HNDSR.load(cfg.init_student, device) if cfg.init_student else copy.deepcopy(teacher)
    model.prior = student

    def save() -> None:
        torch.save(
            {"student": student.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(), "state": state},
            ckpt_path,
        )
        with ema.applied():
            model.save(
                weights_out,
                extra={"distill_step": str(state["step"]), "distill_elapsed": f"{state['elapsed']:.1f}"},
            )

    def score(row: dict) -> None:
        with ema.applied():
            row["train_psnr_y"] = round(quick_psnr(model, probe)[0], 3)
            if val:
                row["val_psnr_y"] = round(quick_psnr(model, val)[0], 3)
                for s in sorted(set(cfg.scales) - {4.0}):
                    row[f"val_psnr_y_x{s:g}"] = round(quick_psnr(model, val, s)[0], 3)

    budget = Budget(
        state, cfg.steps, cfg.seconds, score, save, checkpoint_seconds=cfg.checkpoint_seconds, log=out / "log.jsonl"
    )
    if state["step"] == 0:
        budget.report(
            {
                "step": 0,
                "loss": None,
                "teacher_train_psnr_y": round(quick_psnr(teacher, probe)[0], 3),
                "teacher_val_psnr_y": round(quick_psnr(teacher, val)[0], 3) if val else None,
            }
        )
    while budget.active():
        for g in opt.param_groups:
            g["lr"] = learning_rate(cfg.lr, state["step"], budget.progress(), warmup=100)
        loss = distill_loss(teacher, student, bank.batch(cfg.batch), cfg.context_weight, cfg.gt_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        ema.update()
        budget.tick({"loss": float(loss.detach())})
    budget.finish()
    return weights_out


@torch.no_grad()
def teacher_batch(teacher: HNDSR, bank: PatchBank) -> tuple[torch.Tensor, torch.Tensor]:
    up, _, scale = bank.batch(8)
    return teacher.encoder(up), scale
