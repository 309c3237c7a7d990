"""Full-reference quality metrics on the Y channel (ITU-R BT.601), with border shave."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """uint8/float RGB in [0, 255] -> Y in [16, 235] as float64 (BT.601, as in MATLAB rgb2ycbcr)."""
    img = image.astype(np.float64) / 255.0
    return 16.0 + img @ np.array([65.481, 128.553, 24.966])


def _shave(y: np.ndarray, border: int) -> np.ndarray:
    return y[border:-border, border:-border] if border > 0 else y


def psnr_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    a, b = _shave(rgb_to_y(sr), shave), _shave(rgb_to_y(hr), shave)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
    """scikit-image's SSIM (7x7 window) on Y with data_range 255: the protocol of the reference
    scores in ../shared/data/README.md (bicubic 0.651 at 4x on val/TEAK)."""
    a, b = _shave(rgb_to_y(sr), shave), _shave(rgb_to_y(hr), shave)
    return float(structural_similarity(a, b, data_range=255.0))


def periodic_ratio(image: np.ndarray) -> float:
    """Strength of a 4- or 2-pixel periodic pattern (latent-grid / checkerboard artefact).

    Luminance, Hann-windowed 2-D power spectrum; at each harmonic (N/4 and N/2 along each axis,
    and the N/4 diagonal) the max of the 3x3 bins divided by the median of the 17x17 bins around
    it; the largest of these. Natural aerial crops score about 5, a strong grid artefact 50-400.
    (The definition of ``../shared/tools/periodic_ratio.py``; tested against it.)
    """
    a = image.astype(np.float64)
    y = 0.257 * a[..., 0] + 0.504 * a[..., 1] + 0.098 * a[..., 2]
    y = y - y.mean()
    h, w = y.shape
    power = np.abs(np.fft.fft2(y * np.outer(np.hanning(h), np.hanning(w)))) ** 2
    ratios = []
    for fy, fx in ((0, w // 4), (h // 4, 0), (h // 4, w // 4), (0, w // 2), (h // 2, 0)):
        rows3, cols3 = [(fy + d) % h for d in (-1, 0, 1)], [(fx + d) % w for d in (-1, 0, 1)]
        rows17, cols17 = [(fy + d) % h for d in range(-8, 9)], [(fx + d) % w for d in range(-8, 9)]
        ratios.append(power[np.ix_(rows3, cols3)].max() / np.median(power[np.ix_(rows17, cols17)]))
    return float(max(ratios))


def texture(sr: np.ndarray, hr: np.ndarray, patch: int = 16, share: float = 0.3) -> tuple[float, float]:
    """(detail, grain) of one SR image against its HR image: where does it put high frequencies?

    On BT.601 luma, HF = x - Gaussian blur (sigma 2). The HR is cut into ``patch``-pixel patches
    (an 8-pixel border skipped) and ranked by HF energy; ``detail`` is the SR's HF energy over the
    HR's in the busiest ``share`` of patches, ``grain`` the same in the flattest share (HR: 1, 1;
    a blurry result has detail << 1; added noise raises grain). Over a set, grain/detail is
    median grain / median detail. (The definition of ``../shared/tools/texture.py``; tested
    against it.)
    """
    weights = np.array([0.299, 0.587, 0.114])
    hs, ss = hr.astype(np.float64) @ weights, sr.astype(np.float64) @ weights
    hh, sh = hs - gaussian_filter(hs, 2), ss - gaussian_filter(ss, 2)
    rows, cols = hh.shape[0] // patch * patch, hh.shape[1] // patch * patch

    def patches(x: np.ndarray) -> np.ndarray:
        x = x[8 : rows - 8, 8 : cols - 8]
        return x.reshape(x.shape[0] // patch, patch, x.shape[1] // patch, patch).swapaxes(1, 2).reshape(-1, patch**2)

    ph, ps = patches(hh), patches(sh)
    order = np.argsort((ph**2).mean(1))
    k = max(1, int(share * len(order)))
    flat, busy = order[:k], order[-k:]
    grain = (ps[flat] ** 2).mean() / max((ph[flat] ** 2).mean(), 1e-9)
    detail = (ps[busy] ** 2).mean() / (ph[busy] ** 2).mean()
    return float(detail), float(grain)


def _mean2x2(x: np.ndarray) -> np.ndarray:
    return convolve2d(x, np.full((2, 2), 0.25), mode="same")


def _haar_responses(y: np.ndarray, scales: int = 3) -> list[np.ndarray]:
    """Haar wavelet responses: ``scales`` horizontal then ``scales`` vertical filters."""
    out = []
    for axis in (0, 1):
        for k in range(1, scales + 1):
            size = 2**k
            f = np.full((size, size), 2.0**-k)
            f[size // 2 :] *= -1
            out.append(convolve2d(y, f if axis == 0 else f.T, mode="same"))
    return out


def haarpsi(sr: np.ndarray, hr: np.ndarray, c: float = 30.0, alpha: float = 4.2) -> float:
    """HaarPSI (Reisenhofer et al. 2018), colour version on uint8 RGB, with the paper's 2x2
    pre-subsampling; 1 = identical. Written out from the paper (no maintained package computes it
    without pulling torchvision into this environment)."""

    def yiq(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, g, b = (img[..., i].astype(np.float64) for i in range(3))
        return (
            0.299 * r + 0.587 * g + 0.114 * b,
            0.596 * r - 0.274 * g - 0.322 * b,
            0.211 * r - 0.523 * g + 0.312 * b,
        )

    (y1, i1, q1), (y2, i2, q2) = yiq(hr), yiq(sr)
    y1, y2, i1, i2, q1, q2 = (_mean2x2(v)[::2, ::2] for v in (y1, y2, i1, i2, q1, q2))
    r1, r2 = _haar_responses(y1), _haar_responses(y2)
    sims, weights = [], []
    for o in (0, 1):
        weights.append(np.maximum(np.abs(r1[2 + 3 * o]), np.abs(r2[2 + 3 * o])))
        s = [
            (2 * np.abs(r1[k + 3 * o]) * np.abs(r2[k + 3 * o]) + c) / (r1[k + 3 * o] ** 2 + r2[k + 3 * o] ** 2 + c)
            for k in (0, 1)
        ]
        sims.append((s[0] + s[1]) / 2)
    i1, i2, q1, q2 = (_mean2x2(v) for v in (i1, i2, q1, q2))
    sim_i = (2 * i1 * i2 + c) / (i1**2 + i2**2 + c)
    sim_q = (2 * q1 * q2 + c) / (q1**2 + q2**2 + c)
    sims.append((sim_i + sim_q) / 2)
    weights.append((weights[0] + weights[1]) / 2)
    sim, wt = np.stack(sims), np.stack(weights)
    pooled = np.sum(1 / (1 + np.exp(-alpha * sim)) * wt) / np.sum(wt)
    return float((np.log(pooled / (1 - pooled)) / alpha) ** 2)
