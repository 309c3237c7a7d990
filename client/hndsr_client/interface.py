"""The interface of the served ``hndsr`` model: one definition of every request and response tensor
(name, type, shape, optional, default, range, meaning) and of the request limits.

The Triton configs (``hndsr.serving.configs``), this client's request building, the server's
validation (``hndsr.inference.pipeline.validate``), the UI's controls and the README's interface table are all
derived from it (the README table is checked by a test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MODEL = "hndsr"
STREAM_MODEL = "hndsr_stream"

# How a refused or expired request's message starts (status UNAVAILABLE, HTTP 503). Triton 24.10
# has one UNAVAILABLE code for all three, so the server writes and the client reads these heads.
OVERLOADED = "server overloaded"
"""The bounded queue is full (or the request was not started in time): retry later."""
DRAINING = "server is shutting down"
"""The replica is draining: retry on another one."""
TIMEOUT = "request timeout expired"
"""The request's deadline passed while it was queued or between DDIM steps."""
TOO_LARGE = "exceeds the limit"
"""In the server's refusal of an output (or computed canvas) above the pixel limit (INVALID_ARG):
the client raises ``OutputTooLargeError`` for it."""


def mentions(message: str, phrases: tuple[str, ...]) -> bool:
    """Whether an error message contains one of ``phrases`` (case-insensitive): how the client and
    the server recognise the heads above and Triton's own messages."""
    lower = message.lower()
    return any(phrase.lower() in lower for phrase in phrases)


def model_scale(scale: float, min_model_scale: float) -> float:
    """The scale of the canvas the server computes for a requested ``scale``: below
    ``min_model_scale`` (served with the tiling) it computes at that scale and resizes down."""
    return max(float(scale), float(min_model_scale))


DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
"""Triton's standard ports, used by the server launcher, the client, the UI and the containers."""

MIN_INPUT_SIDE = 8
MAX_OUTPUT_PIXELS = 16_000_000
"""Largest SR output (round(s*H) * round(s*W)) the server accepts in one request."""
TILING_PARAMETERS = ("tile", "tile_overlap", "latent_factor", "min_model_scale")
"""The server's canvas tiling (and the scale below which it computes at ``min_model_scale`` and
resizes), served as parameters of the ``hndsr`` model's config (the server owns it:
``hndsr.config``); scene mode aligns and sizes its chunks by it (``HNDSRClient.tiling``)."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of the ``hndsr`` model's interface."""

    name: str
    datatype: str
    """Triton wire type: UINT8, FP32, INT32, INT64 or BYTES."""
    dims: tuple[int, ...]
    """Config dims (-1 = any size)."""
    shape: str
    """The shape as documented (``[H, W, 3]``)."""
    description: str
    optional: bool = False
    default: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def config_type(self) -> str:
        return "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}"

    def config_entry(self) -> str:
        optional = " optional: true" if self.optional else ""
        dims = ", ".join(map(str, self.dims))
        return f'{{ name: "{self.name}" data_type: {self.config_type} dims: [ {dims} ]{optional} }}'

    def out_of_range(self, value: float) -> str | None:
        """The error message for ``value`` if it is outside this field's range, else None."""
        if self.minimum is None or self.maximum is None:
            return None
        if math.isfinite(value) and self.minimum <= value <= self.maximum:
            return None
        return f"{self.name} must be in [{self.minimum:g}, {self.maximum:g}], got {value:g}"

    def notes(self) -> str:
        parts = ["optional" if self.optional else "", self.description]
        if self.default is not None:
            parts.append(f"default {self.default:g}")
        if self.minimum is not None:
            parts.append(f"range {self.minimum:g}–{self.maximum:g}")
        return "; ".join(p for p in parts if p)


IMAGE = Tensor("IMAGE", "UINT8", (-1, -1, 3), "[H, W, 3]", "the low-res RGB image")
SCALE = Tensor(
    "SCALE", "FP32", (1,), "[1]", "upscaling factor, non-integer allowed", True, default=4.0, minimum=2.0, maximum=8.0
)
STEPS = Tensor(
    "STEPS", "INT32", (1,), "[1]", "DDIM steps; 0 = the fast deterministic path", True, default=1, minimum=0, maximum=50
)
SEED = Tensor("SEED", "INT64", (1,), "[1]", "noise seed; same seed → identical bytes", True, default=0)
ETA = Tensor(
    "ETA", "FP32", (1,), "[1]", "DDIM eta; 0 = deterministic sampler", True, default=0.0, minimum=0.0, maximum=1.0
)
ENSEMBLE = Tensor(
    "ENSEMBLE",
    "INT32",
    (1,),
    "[1]",
    "geometric self-ensemble: the mean of N flipped/transposed passes (2: + mirror, 4: + flips, "
    "8: + transposes), N× the time, a little more faithful",
    True,
    default=1,
    minimum=1,
    maximum=8,
)
SR_IMAGE = Tensor("SR_IMAGE", "UINT8", (-1, -1, 3), "[round(s·H), round(s·W), 3]", "the result")
INFO = Tensor(
    "INFO",
    "BYTES",
    (1,),
    "[1]",
    "JSON: scale, steps, seed, eta, ensemble, tiles, input_size, output_size, device, precision, model_version, "
    "stage_ms (encoder/prior/unet/decoder), total_ms",
)
PROGRESS = Tensor(
    "PROGRESS", "INT32", (2,), "[2]", "hndsr_stream only, gRPC streaming: DDIM steps done, total (all ensemble views)"
)

INPUTS = (IMAGE, SCALE, STEPS, SEED, ETA, ENSEMBLE)
OUTPUTS = (SR_IMAGE, INFO)
STREAM_OUTPUTS = (*OUTPUTS, PROGRESS)

DEFAULT_SCALE = float(SCALE.default)
DEFAULT_STEPS = int(STEPS.default)
"""Default DDIM steps of the generative path (README: step/start sweep on val/TEAK)."""
SCALE_MIN, SCALE_MAX = float(SCALE.minimum), float(SCALE.maximum)
STEPS_MAX = int(STEPS.maximum)
ENSEMBLE_MAX = int(ENSEMBLE.maximum)


@dataclass(frozen=True)
class Limits:
    """Request limits the server enforces before any heavy work."""

    scale_min: float = SCALE_MIN
    scale_max: float = SCALE_MAX
    steps_max: int = STEPS_MAX
    min_input_side: int = MIN_INPUT_SIDE
    max_output_pixels: int = MAX_OUTPUT_PIXELS


def markdown_table() -> str:
    """The README's interface table."""
    rows = ["| tensor | type | shape | notes |", "|---|---|---|---|"]
    for t in (*INPUTS, *STREAM_OUTPUTS):
        rows.append(f"| `{t.name}` | {t.datatype} | `{t.shape}` | {t.notes()} |")
    return "\n".join(rows)
