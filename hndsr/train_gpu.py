"""One training session on a lent GPU machine, bounded by wall time; results land in ``--out``.

Prepare here (the training set as lossless WebP, 48 MB, inside the 64 MiB transfer limit):

    .venv/bin/python -c "from hndsr.data import pack_images as p; p('../shared/data/aerial/train', '.gpu/data/train'); \
p('../shared/data/aerial/val', '.gpu/data/val')"

and run there, carrying ``.gpu`` (the machine has CUDA PyTorch, safetensors, Pillow, scikit-image):

    PYTHONPATH=. python3 -m hndsr.train_gpu --data .gpu/data/train --val .gpu/data/val --out $OUT

It writes ``hndsr.safetensors`` (EMA weights, fp16, written at every checkpoint so an interrupted
run still returns weights), ``log.csv``, ``train.json`` (GPU, steps, seconds) into ``--out``.
Continue on CPU with ``hndsr train --init <weights>`` (the phase and step travel in the metadata).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--val")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--regression-seconds", type=float, default=330)
    parser.add_argument("--degrid-seconds", type=float, default=60)
    parser.add_argument("--diffusion-seconds", type=float, default=110)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--diffusion-lr", type=float, default=5e-4)
    parser.add_argument("--max-timestep", type=int, default=TrainConfig.max_timestep)
    parser.add_argument("--start-timestep", type=int, default=TrainConfig.start_timestep)
    parser.add_argument("--init", help="start from these weights (fine-tune)")
    parser.add_argument("--restart-phase", choices=("regression", "degrid", "diffusion"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for the GPU machine (use `hndsr train` on CPU)")
    work = Path("/tmp/hndsr-train")
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        data=args.data,
        val=args.val,
        out=str(work),
        regression_steps=10**9,
        degrid_steps=10**9,
        diffusion_steps=10**9,
        degrid_seconds=args.degrid_seconds,
        regression_seconds=args.regression_seconds,
        diffusion_seconds=args.diffusion_seconds,
        batch=args.batch,
        lr=args.lr,
        diffusion_lr=args.diffusion_lr,
        max_timestep=args.max_timestep,
        start_timestep=args.start_timestep,
        init=args.init,
        restart_phase=args.restart_phase,
        checkpoint_seconds=60,
        eval_seconds=45,
        weights_out=str(args.out / "hndsr.safetensors"),
    )
    start = time.time()
    trainer = Trainer(cfg)
    print(f"data on {trainer.device} ({torch.cuda.get_device_name()}) in {time.time() - start:.1f}s", flush=True)
    preflight(trainer)
    try:
        trainer.run()
    finally:
        shutil.copy(work / "log.csv", args.out / "log.csv")
        summary = {
            "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "config": vars(cfg),
            "final_state": trainer.state,
            "wall_s": round(time.time() - start, 1),
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
        (args.out / "train.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
