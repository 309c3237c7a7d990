"""Where the checkout keeps the served weights and the Triton model repository."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = REPO_ROOT / "weights" / "hndsr.safetensors"
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
ASSETS = Path(__file__).resolve().parent / "assets"
"""The demo sample and NIQE's parameters (see assets/README.md)."""
