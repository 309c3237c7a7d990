"""Shared constants: tile geometry, latent layout and request limits (one source of truth)."""

from __future__ import annotations

# The served interface's facts (request limits, defaults, canvas tiling) live with the client,
# which the server depends on: one definition for both sides. Re-exported for the server's modules.
from hndsr_client.interface import (  # noqa: F401
    DEFAULT_SCALE,
    DEFAULT_STEPS,
    LATENT_FACTOR,
    MAX_OUTPUT_PIXELS,
    MIN_INPUT_SIDE,
    SCALE_MAX,
    SCALE_MIN,
    STEPS_MAX,
    TILE,
    TILE_OVERLAP,
    Limits,
)

LATENT_CHANNELS = 48
"""As many latent channels as pixels in a 4x4 cell: the autoencoder need not compress."""
CONTEXT_CHANNELS = 16
LATENT_TILE = TILE // LATENT_FACTOR
NUM_TRAIN_TIMESTEPS = 1000
"""Timesteps of the diffusion noise schedule the UNet was trained with."""
