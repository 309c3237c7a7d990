"""Is the model repository's ONNX exported from these weights? (no torch: ``hndsr serve`` asks at start)"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hndsr.config import STAGES


def weights_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp_path(repo: Path, stage: str) -> Path:
    """The digest of the weights a stage's ONNX was exported from, written beside it."""
    return repo / stage / "1" / "model.onnx.sha256"


def is_current(repo: Path, weights: Path) -> bool:
    """True when every stage's ONNX was exported from these exact weights."""
    digest = weights_digest(weights)

    def current(stage: str) -> bool:
        stamp = stamp_path(repo, stage)
        return stamp.exists() and stamp.read_text().strip() == digest and (repo / stage / "1" / "model.onnx").exists()

    return all(current(s) for s in STAGES)
