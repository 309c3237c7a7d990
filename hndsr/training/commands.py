"""``hndsr train``: the three-phase run, prior distillation, the adversarial UNet fine-tune, the
wall-time-bounded session for a lent GPU machine and the data pack it carries. Each command imports
its trainer when it runs."""

from __future__ import annotations

from pathlib import Path

import typer

from hndsr.training.config import TrainConfig

app = typer.Typer(add_completion=False, help="Train the model (CPU or CUDA); every run resumes from its --out.")
TRAIN = TrainConfig(data="")
PHASES = ("regression", "degrid", "diffusion")


@app.command()
def phases(
    data: str = typer.Option(
        ..., help="training image folders, comma-separated; repeat one to weight it (e.g. A,A,B: A twice)"
    ),
    val: Path | None = typer.Option(None, help="validation images for the quick PSNR log"),
    out: Path = typer.Option(Path(TRAIN.out), help="checkpoint, log.csv and curves.png go here"),
    init: Path | None = typer.Option(None, help="start from these weights (phase/step from their metadata)"),
    restart_phase: str | None = typer.Option(
        None, help="with --init: restart regression, degrid or diffusion at step 0"
    ),
    regression_steps: int = typer.Option(TRAIN.regression_steps, help="steps of phase 1 (encoder+FNO+decoder)"),
    degrid_steps: int = typer.Option(TRAIN.degrid_steps, help="steps of phase 2 (FNO + decoder, grid penalty)"),
    diffusion_steps: int = typer.Option(TRAIN.diffusion_steps, help="steps of phase 3 (UNet + context head)"),
    regression_seconds: float = typer.Option(0.0, help="wall-time cap of phase 1 (0 = none)"),
    degrid_seconds: float = typer.Option(0.0, help="wall-time cap of phase 2 (0 = none)"),
    diffusion_seconds: float = typer.Option(0.0, help="wall-time cap of phase 3 (0 = none)"),
    harmonic_weight: float = typer.Option(TRAIN.harmonic_weight, help="grid-harmonic penalty of phase 2"),
    batch: int = typer.Option(TRAIN.batch, help="patches per step"),
    lr: float = typer.Option(TRAIN.lr, help="peak learning rate of phase 1"),
    diffusion_lr: float = typer.Option(TRAIN.diffusion_lr, help="peak learning rate of phase 3"),
    degrid_lr: float = typer.Option(TRAIN.degrid_lr, help="peak learning rate of phase 2"),
    stop_after: str | None = typer.Option(None, help="stop after this phase (e.g. degrid: the UNet stays as it is)"),
    max_timestep: int = typer.Option(TRAIN.max_timestep, help="phase 3 trains the UNet on timesteps below this"),
    augment: bool = typer.Option(TRAIN.augment, help="random HR shrink and colour-channel shuffles"),
    seed: int = typer.Option(TRAIN.seed, help="random seed"),
    threads: int = typer.Option(TRAIN.threads, help="torch CPU threads (0 = default)"),
    checkpoint_seconds: float = typer.Option(TRAIN.checkpoint_seconds, help="checkpoint + weights every N s"),
    eval_seconds: float = typer.Option(TRAIN.eval_seconds, help="quick PSNR/periodic-ratio log every N s"),
    weights_out: Path | None = typer.Option(
        None,
        help="EMA weights (fp16 safetensors) written at each checkpoint (default OUT/hndsr.safetensors; "
        "name weights/hndsr.safetensors to replace the served weights)",
    ),
) -> None:
    """Train regression (encoder+FNO+decoder), de-gridding, then the diffusion UNet; resumes from OUT."""
    from hndsr.training.trainer import plot_log
    from hndsr.training.trainer import train as run_training

    cfg = TrainConfig(
        data=data,
        val=str(val) if val else None,
        out=str(out),
        init=str(init) if init else None,
        restart_phase=restart_phase,
        regression_steps=regression_steps,
        degrid_steps=degrid_steps,
        diffusion_steps=diffusion_steps,
        regression_seconds=regression_seconds,
        degrid_seconds=degrid_seconds,
        diffusion_seconds=diffusion_seconds,
        harmonic_weight=harmonic_weight,
        batch=batch,
        lr=lr,
        diffusion_lr=diffusion_lr,
        degrid_lr=degrid_lr,
        stop_after=stop_after,
        max_timestep=max_timestep,
        augment=augment,
        seed=seed,
        threads=threads,
        checkpoint_seconds=checkpoint_seconds,
        eval_seconds=eval_seconds,
        weights_out=str(weights_out or out / "hndsr.safetensors"),
    )
    path = run_training(cfg)
    plot_log(out / "log.csv", out / "curves.png")
    typer.echo(f"weights: {path}; curves: {out / 'curves.png'}")


@app.command()
def distill(
    teacher: str = typer.Option("weights/hndsr.safetensors", help="trained weights (the wide prior)"),
    data: str = typer.Option(..., help="training images"),
    out: str = typer.Option("runs/distill", help="checkpoints, log and exported weights"),
    val: str | None = typer.Option(None, help="validation images (reported, not trained on)"),
    width: int = typer.Option(48, help="residual channels of the narrow prior"),
    hidden: int = typer.Option(32, help="hidden channels of each of its blocks"),
    seconds: float = typer.Option(0.0, help="wall-time budget (0 = by steps)"),
    steps: int = typer.Option(20_000, help="training steps"),
    lr: float = typer.Option(3e-4, help="peak learning rate (warm-up, then cosine)"),
    gt_weight: float = typer.Option(0.0, help="weight of L1(decoder(student z0), HR) beside the distillation"),
    init_student: str | None = typer.Option(None, help="start from this file (its prior; kept stages)"),
    scales: str = typer.Option("", help="batch scales to draw from, e.g. 8,8,6,4 (default: training mix)"),
) -> None:
    """Prune the FNO prior to WIDTH channels and distill it from the trained one."""
    from hndsr.training.distill import DistillConfig
    from hndsr.training.distill import distill as run_distill

    cfg = DistillConfig(
        teacher=teacher,
        data=data,
        out=out,
        val=val,
        width=width,
        hidden=hidden,
        seconds=seconds,
        steps=steps,
        lr=lr,
        gt_weight=gt_weight,
        init_student=init_student,
        scales=tuple(float(v) for v in scales.split(",") if v.strip()),
    )
    typer.echo(run_distill(cfg))


@app.command()
def adversarial(
    init: str = typer.Option("weights/hndsr.safetensors", help="trained weights to fine-tune the UNet of"),
    data: str = typer.Option(..., help="training images"),
    out: str = typer.Option("runs/adversarial", help="checkpoints, log and exported weights"),
    val: str | None = typer.Option(None, help="validation images (reported, not trained on)"),
    seconds: float = typer.Option(0.0, help="wall-time budget (0 = by steps)"),
    steps: int = typer.Option(20_000, help="training steps"),
    batch: int = typer.Option(8, help="patches per step (half sampler starts, half forward process)"),
    patch: int = typer.Option(128, help="HR patch side"),
    lr: float = typer.Option(1e-4, help="UNet peak learning rate"),
    adv_weight: float = typer.Option(0.03, help="weight of the adversarial loss"),
    v_weight: float = typer.Option(0.1, help="weight of the v-MSE loss on the forward-process half"),
    lowfreq_weight: float = typer.Option(0.0, help="weight of an L1 on 4x4 cell means (tone anchor)"),
    consistency_weight: float = typer.Option(0.0, help="weight of the chain-consistency loss"),
    gate: bool = typer.Option(True, help="train through the weights' texture gate, as served"),
    disc_warmup: int = typer.Option(0, help="first steps train the discriminator alone (the UNet frozen)"),
    threads: int = typer.Option(0, help="CPU threads (0 = PyTorch's default)"),
    checkpoint_seconds: float = typer.Option(300.0, help="seconds between checkpoints (each keeps its weights)"),
) -> None:
    """Fine-tune the UNet with a patch discriminator beside L1 and v-MSE."""
    from hndsr.training.adversarial import AdversarialConfig
    from hndsr.training.adversarial import adversarial as run_adversarial

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
        v_weight=v_weight,
        lowfreq_weight=lowfreq_weight,
        consistency_weight=consistency_weight,
        gate=gate,
        disc_warmup=disc_warmup,
        threads=threads,
        checkpoint_seconds=checkpoint_seconds,
        report_seconds=checkpoint_seconds,
    )
    typer.echo(run_adversarial(cfg))


@app.command()
def gpu(
    data: str = typer.Option(..., help="training images (e.g. .gpu/data/train, packed by hndsr train pack)"),
    val: str | None = typer.Option(None, help="validation images for the quick PSNR log"),
    out: Path = typer.Option(..., help="hndsr.safetensors, log.csv and train.json go here"),
    regression_seconds: float = typer.Option(330, help="wall time of phase 1 (encoder+FNO+decoder)"),
    degrid_seconds: float = typer.Option(60, help="wall time of phase 2 (FNO + decoder, grid penalty)"),
    diffusion_seconds: float = typer.Option(110, help="wall time of phase 3 (UNet + context head)"),
    batch: int = typer.Option(64, help="patches per step"),
    lr: float = typer.Option(7e-4, help="peak learning rate of phase 1"),
    diffusion_lr: float = typer.Option(5e-4, help="peak learning rate of phase 3"),
    max_timestep: int = typer.Option(TRAIN.max_timestep, help="phase 3 trains the UNet on timesteps below this"),
    start_timestep: int = typer.Option(TRAIN.start_timestep, help="DDIM start timestep stored in the weights"),
    init: str | None = typer.Option(None, help="start from these weights (fine-tune)"),
    restart_phase: str | None = typer.Option(None, help="with --init: restart this phase at step 0"),
) -> None:
    """One wall-time-bounded training session on a CUDA GPU (see hndsr/training/gpu.py)."""
    from hndsr.training.gpu import run_on_gpu

    if restart_phase is not None and restart_phase not in PHASES:
        raise typer.BadParameter(f"must be one of {', '.join(PHASES)}", param_hint="--restart-phase")
    cfg = TrainConfig(
        data=data,
        val=val,
        out="/tmp/hndsr-train",
        regression_steps=10**9,
        degrid_steps=10**9,
        diffusion_steps=10**9,
        degrid_seconds=degrid_seconds,
        regression_seconds=regression_seconds,
        diffusion_seconds=diffusion_seconds,
        batch=batch,
        lr=lr,
        diffusion_lr=diffusion_lr,
        max_timestep=max_timestep,
        start_timestep=start_timestep,
        init=init,
        restart_phase=restart_phase,
        checkpoint_seconds=60,
        eval_seconds=45,
        weights_out=str(out / "hndsr.safetensors"),
    )
    run_on_gpu(cfg, out)


@app.command()
def pack(
    train: str = typer.Option(..., help="comma-separated training folders, drawn from in turn"),
    out: Path = typer.Option(Path(".gpu/data"), help="writes <out>/train and <out>/val (git ignores .gpu)"),
    val: str | None = typer.Option(None, help="comma-separated validation folders for the quick log"),
    val_tiles: int = typer.Option(3, help="validation tiles per validation folder"),
    budget_mib: float | None = typer.Option(
        None, help="size limit of the pack (default: what the 64 MiB device transfer leaves beside the tree)"
    ),
) -> None:
    """Pack training data as lossless WebP for a lent GPU machine, within its transfer limit."""
    from hndsr.training.data import pack_images
    from hndsr.training.gpu import transfer_budget

    budget = int(budget_mib * 2**20) if budget_mib is not None else transfer_budget()
    used = 0
    if val:
        files, used = pack_images(val.split(","), out / "val", per_folder=val_tiles)
        typer.echo(f"val: {files} tiles, {used / 2**20:.1f} MiB")
    files, size = pack_images(train.split(","), out / "train", budget_bytes=budget - used)
    typer.echo(f"train: {files} tiles, {size / 2**20:.1f} MiB (budget {budget / 2**20:.1f} MiB in all)")
