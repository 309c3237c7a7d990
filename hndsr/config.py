"""Shared constants: tile geometry, latent layout and request limits (one source of truth)."""

from __future__ import annotations

# The served interface's facts (request limits, defaults) live with the client, which the server
# depends on: one definition for both sides. Re-exported for the server's modules.
from hndsr_client.interface import (  # noqa: F401
    DEFAULT_SCALE,
    DEFAULT_STEPS,
    MAX_OUTPUT_PIXELS,
    MIN_INPUT_SIDE,
    SCALE_MAX,
    SCALE_MIN,
    STEPS_MAX,
    Limits,
)

# The canvas tiling is the server's own (the stage models are exported for this tile shape); the
# ``hndsr`` model's config serves it to clients (``hndsr_client.interface.TILING_PARAMETERS``).
LATENT_FACTOR = 4
"""HR pixels per latent cell along each axis: the server pads its canvas to this grid."""
TILE = 208
"""HR tile edge of the server's canvas tiling (fixed shape of the exported stage models). 208 = 192 + 16:
a 400x400 output (a 100x100 LR tile at 4x) needs 2x2 tiles with 8% overlap work."""
TILE_OVERLAP = 16
"""HR pixels shared by neighbouring canvas tiles, blended with a Hann ramp. Scene mode aligns its
chunks to this tiling, so chunk interiors come out as if the image had been sent whole."""

MIN_MODEL_SCALE = 4
"""Scales below this are computed at this scale and resized down (antialiased bicubic): on 12
training tiles (docs/training.md) steps 0 gains 0.36 dB at 2x and 0.27 dB at 3x over running the
model at the requested scale, whose latent grid would be coarser than the LR pixels. Served to
clients with the tiling (scene mode aligns and sizes its chunks on the computed canvas)."""

STAGES = ("encoder", "prior", "unet", "decoder")
"""The four exported stage models, in the order a request runs them (steps 0 skips the unet)."""

LATENT_CHANNELS = 48
"""As many latent channels as pixels in a 4x4 cell: the autoencoder need not compress."""
CONTEXT_CHANNELS = 16
LATENT_TILE = TILE // LATENT_FACTOR
NUM_TRAIN_TIMESTEPS = 1000
"""Timesteps of the diffusion noise schedule the UNet was trained with."""
