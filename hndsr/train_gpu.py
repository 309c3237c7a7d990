"""One training session on a lent GPU machine, bounded by wall time; results land in ``--out``.

Prepare here (the training set as lossless WebP, 48 MB, inside the 64 MiB transfer limit):

    .venv/bin/python -c "from hndsr.data import pack_images as p; p('../shared/data/aerial/train', '.gpu/data/train'); \
p('../shared/data/aerial/val', '.gpu/data/val')"

and run there, carrying ``.gpu`` (the machine has CUDA PyTorch, safetensors, Pillow, scikit-image):

    PYTHONPATH=.:client python3 -m hndsr.train_gpu --data .gpu/data/train --val .gpu/data/val --out $OUT

It writes ``hndsr.safetensors`` (EMA weights, fp16, written at every checkpoint so an interrupted
run still returns weights), ``log.csv``, ``train.json`` (GPU, steps, seconds) into ``--out``.
Continue on CPU with ``hndsr train --init <weights>`` (the phase and step travel in the metadata).
"""

from __future__ import annotations

import json
import shutil
import time
from enum import Enum
from pathlib import Path

import torch
import typer

from hndsr.config import TrainConfig
from hndsr.train import Trainer, diffusion_loss, regression_loss


def preflight(trainer: Trainer) -> None:
    """One forward/backward of each phase's loss, so a failure shows in seconds, not minutes."""
    model, sched = trainer.model, trainer.sched
    up, hr, scale = trainer.bank.batch(2)
    with trainer._autocast():
        losses = [regression_loss(model, up, hr, scale, mse=False), diffusion_loss(model, up, hr, scale, sched, 700)]
    sum(losses).backward()
    model.zero_grad(set_to_none=True)
    print("preflight ok:", [round(float(v), 4) for v in losses], flush=True)


class Phase(str, Enum):
    regression = "regression"
    degrid = "degrid"
    diffusion = "diffusion"


app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])


@app.command()
def train(
    data: str = typer.Option(..., help="training images (e.g. .gpu/data/train, packed by hndsr.data.pack_images)"),
    val: str | None = typer.Option(None, help="validation images for the quick PSNR log"),
    out: Path = typer.Option(..., help="hndsr.safetensors, log.csv and train.json go here"),
    regression_seconds: float = typer.Option(330, help="wall time of phase 1 (encoder+FNO+decoder)"),
    degrid_seconds: float = typer.Option(60, help="wall time of phase 2 (FNO + decoder, grid penalty)"),
    diffusion_seconds: float = typer.Option(110, help="wall time of phase 3 (UNet + context head)"),
    batch: int = typer.Option(64, help="patches per step"),
    lr: float = typer.Option(7e-4, help="peak learning rate of phase 1"),
    diffusion_lr: float = typer.Option(5e-4, help="peak learning rate of phase 3"),
    max_timestep: int = typer.Option(TrainConfig.max_timestep, help="phase 3 trains the UNet on timesteps below this"),
    start_timestep: int = typer.Option(TrainConfig.start_timestep, help="DDIM start timestep stored in the weights"),
    init: str | None = typer.Option(None, help="start from these weights (fine-tune)"),
    restart_phase: Phase | None = typer.Option(None, help="with --init: restart this phase at step 0"),
) -> None:
    """One wall-time-bounded training session on a CUDA GPU; results land in --out."""
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for the GPU machine (use `hndsr train` on CPU)")
    work = Path("/tmp/hndsr-train")
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        data=data,
        val=val,
        out=str(work),
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
        restart_phase=restart_phase.value if restart_phase else None,
        checkpoint_seconds=60,
        eval_seconds=45,
        weights_out=str(out / "hndsr.safetensors"),
    )
    run(cfg, out)


def run(cfg: TrainConfig, out: Path) -> None:
    """Train; whatever happens, copy the log and write train.json (GPU, steps, seconds) into ``out``."""
    start = time.time()
    trainer = Trainer(cfg)
    print(f"data on {trainer.device} ({torch.cuda.get_device_name()}) in {time.time() - start:.1f}s", flush=True)
    preflight(trainer)
    try:
        trainer.run()
    finally:
        shutil.copy(Path(cfg.out) / "log.csv", out / "log.csv")
        summary = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "config": vars(cfg),
            "final_state": trainer.state,
            "wall_s": round(time.time() - start, 1),
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
        (out / "train.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app()
