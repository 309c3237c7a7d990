"""One training session on a lent GPU machine, bounded by wall time; results land in ``--out``.

Prepare here: pack a balanced subset of the training folders, and a few validation tiles for the
quick log, as lossless WebP into ``.gpu`` (git ignores it; the run carries it), within what the
machine's 64 MiB transfer limit leaves beside the working tree (``transfer_budget``):

    .venv/bin/hndsr train pack --out .gpu/data \
        --train ../shared/data/aerial/train,../shared/data/extra/train \
        --val ../shared/data/aerial/val/TEAK,../shared/data/extra/val/boruszyn

and run there, carrying ``.gpu`` (the machine has CUDA PyTorch, safetensors, Pillow, scikit-image):

    PYTHONPATH=.:client python3 -m hndsr.cli train gpu --data .gpu/data/train --val .gpu/data/val --out $OUT

It writes ``hndsr.safetensors`` (EMA weights, fp16, written at every checkpoint so an interrupted
run still returns weights), ``log.csv``, ``train.json`` (GPU, steps, seconds) into ``--out``.
Continue on CPU with ``hndsr train phases --init <weights>`` (the phase and step travel in the metadata).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import torch

from hndsr.paths import REPO_ROOT
from hndsr.training.config import TrainConfig
from hndsr.training.trainer import Trainer, diffusion_loss, regression_loss

TRANSFER_LIMIT = 64 << 20
"""What one device run may carry: the working tree's files plus the carried paths."""


def transfer_budget(root: Path = REPO_ROOT, limit: int = TRANSFER_LIMIT, margin: int = 1 << 20) -> int:
    """Bytes left for carried data: the limit minus what travels anyway (the working tree's tracked
    and untracked, not ignored files) and a margin."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    used = sum((root / f).stat().st_size for f in listed.split("\0") if f and (root / f).is_file())
    return limit - used - margin


def preflight(trainer: Trainer) -> None:
    """One forward/backward of each phase's loss, so a failure shows in seconds, not minutes."""
    model, sched = trainer.model, trainer.sched
    up, hr, scale = trainer.bank.batch(2)
    with trainer._autocast():
        losses = [regression_loss(model, up, hr, scale, mse=False), diffusion_loss(model, up, hr, scale, sched, 700)]
    sum(losses).backward()
    model.zero_grad(set_to_none=True)
    print("preflight ok:", [round(float(v), 4) for v in losses], flush=True)


def run_on_gpu(cfg: TrainConfig, out: Path) -> None:
    """Train; whatever happens, copy the log and write train.json (GPU, steps, seconds) into ``out``."""
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this command is for the GPU machine (use `hndsr train phases` on CPU)")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
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
