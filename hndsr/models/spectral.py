"""Truncated 2-D spectral convolution written as matrix products with DFT bases.

The forward real FFT along W and the complex FFT along H are replaced by products with
precomputed cosine/sine bases restricted to the kept modes, so the exported ONNX graph has
only MatMul ops (no DFT op) and the result equals the ``torch.fft`` formulation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dft_bases(size_h: int, size_w: int, modes_h: int, modes_w: int) -> dict[str, torch.Tensor]:
    """Bases for the kept modes: rows 0..m-1 and H-m..H-1 along H, 0..m-1 along W."""
    kh = torch.cat([torch.arange(modes_h), torch.arange(size_h - modes_h, size_h)]).double()
    kw = torch.arange(modes_w).double()
    h = torch.arange(size_h).double()
    w = torch.arange(size_w).double()
    ang_h = 2 * math.pi * kh[:, None] * h[None, :] / size_h  # [2mh, H]
    ang_w = 2 * math.pi * w[:, None] * kw[None, :] / size_w  # [W, mw]
    # Inverse real transform along W: Hermitian weights (1 for DC and Nyquist, 2 otherwise).
    herm = torch.full((modes_w,), 2.0, dtype=torch.float64)
    herm[0] = 1.0
    if size_w % 2 == 0 and modes_w > size_w // 2:
        herm[size_w // 2] = 1.0
    inv_w_cos = (herm[:, None] * torch.cos(ang_w.T)) / size_w  # [mw, W]
    inv_w_sin = (herm[:, None] * torch.sin(ang_w.T)) / size_w
    inv_w_sin[0] = 0.0  # imaginary part of DC is discarded by irfft
    return {
        "fw_cos": torch.cos(ang_w).float(),
        "fw_sin": -torch.sin(ang_w).float(),
        "fh_cos": torch.cos(ang_h).float(),
        "fh_sin": -torch.sin(ang_h).float(),
        "ih_cos": (torch.cos(ang_h).T).float(),  # [H, 2mh], inverse complex DFT along H
        "ih_sin": (torch.sin(ang_h).T).float(),
        "iw_cos": inv_w_cos.float(),
        "iw_sin": inv_w_sin.float(),
    }


class SpectralConv2d(nn.Module):
    """FNO spectral convolution: keep low modes, mix channels per mode, transform back."""

    def __init__(self, in_channels: int, out_channels: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / (in_channels * out_channels)
        shape = (in_channels, out_channels, 2 * modes, modes)
        self.weight_re = nn.Parameter(scale * torch.randn(shape))
        self.weight_im = nn.Parameter(scale * torch.randn(shape))
        self._bases: dict[tuple[int, int, str], dict[str, torch.Tensor]] = {}

    def bases(self, size_h: int, size_w: int, device: torch.device) -> dict[str, torch.Tensor]:
        key = (size_h, size_w, str(device))
        if key not in self._bases:
            if 2 * self.modes > size_h or self.modes > size_w // 2 + 1:
                raise ValueError(f"grid {size_h}x{size_w} too small for {self.modes} modes")
            self._bases[key] = {k: v.to(device) for k, v in dft_bases(size_h, size_w, self.modes, self.modes).items()}
        return self._bases[key]

    def mix(self, fr: torch.Tensor, fi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mode complex channel mixing of the kept modes [B, Ci, X, Y], as one batched matrix
        product over the modes (onnxruntime runs it several times faster than Einsum):
        ``[re, -im] @ [wr; wi]`` is the real part, ``[im, re] @ [wr; wi]`` the imaginary part, so
        the exported weight stays the size of ``weight_re`` plus ``weight_im``."""
        batch, _, size_x, size_y = fr.shape
        weight = torch.cat([self.weight_re, self.weight_im], dim=0).flatten(2).permute(2, 0, 1)  # [XY, 2Ci, Co]
        f = torch.cat([torch.cat([fr, -fi], dim=1), torch.cat([fi, fr], dim=1)], dim=0)  # [2B, 2Ci, X, Y]
        g = torch.matmul(f.flatten(2).permute(2, 0, 1), weight)  # [XY, 2B, Co]
        g = g.permute(1, 2, 0).reshape(2 * batch, -1, size_x, size_y)
        return g[:batch], g[batch:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # The DFT products lose too much in bf16/fp16 mixed-precision training: run them in fp32.
            with torch.autocast(x.device.type, enabled=False):
                return self.forward(x.float())
        b = self.bases(x.shape[-2], x.shape[-1], x.device)
        # Forward rfft along W, then complex DFT along H (kept modes only).
        xr = x @ b["fw_cos"]  # [B, C, H, mw]
        xi = x @ b["fw_sin"]
        fr = b["fh_cos"] @ xr - b["fh_sin"] @ xi  # [B, C, 2mh, mw]
        fi = b["fh_cos"] @ xi + b["fh_sin"] @ xr
        gr, gi = self.mix(fr, fi)
        # Inverse complex DFT along H, then inverse real DFT along W.
        hr = b["ih_cos"] @ gr - b["ih_sin"] @ gi  # [B, C, H, mw]
        hi = b["ih_cos"] @ gi + b["ih_sin"] @ gr
        return (hr @ b["iw_cos"] - hi @ b["iw_sin"]) / x.shape[-2]

    def forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        """Reference implementation with ``torch.fft`` (used by tests, not exportable)."""
        m = self.modes
        size_h, size_w = x.shape[-2:]
        x_ft = torch.fft.rfft2(x)
        weight = torch.complex(self.weight_re, self.weight_im)
        out = torch.zeros(x.shape[0], weight.shape[1], size_h, size_w // 2 + 1, dtype=x_ft.dtype, device=x.device)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], weight[:, :, :m])
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m:, :m], weight[:, :, m:])
        return torch.fft.irfft2(out, s=(size_h, size_w))
