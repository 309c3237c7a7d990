"""NIQE (Mittal et al. 2013), no-reference naturalness score: lower is more natural.

Follows the published algorithm as implemented in BasicSR (``basicsr/metrics/niqe.py``) and uses
its published pristine-image model (``niqe_pris_params.npz``, Apache-2.0, shipped in ``hndsr/assets``).
No maintained PyPI package computes NIQE offline without downloading its parameters, so the
algorithm is written out here; the half-scale resize uses Pillow's antialiased bicubic instead of
MATLAB's ``imresize``, which moves scores by a few hundredths.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import convolve
from scipy.special import gamma

from hndsr.evaluation.metrics import rgb_to_y
from hndsr.paths import ASSETS

DEFAULT_PARAMS = ASSETS / "niqe_pris_params.npz"

_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))


@lru_cache(maxsize=4)
def load_params(path: str | Path = DEFAULT_PARAMS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not Path(path).exists():
        raise FileNotFoundError(f"NIQE parameters not found at {path} (pass niqe_params=...)")
    data = np.load(path)
    return data["mu_pris_param"], data["cov_pris_param"], data["gaussian_window"]


def _aggd(block: np.ndarray) -> tuple[float, float, float]:
    block = block.ravel()
    left = np.sqrt(np.mean(block[block < 0] ** 2))
    right = np.sqrt(np.mean(block[block > 0] ** 2))
    gammahat = left / right
    rhat = np.mean(np.abs(block)) ** 2 / np.mean(block**2)
    rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = _GAM[np.argmin((_R_GAM - rhatnorm) ** 2)]
    factor = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left * factor, right * factor


def _features(block: np.ndarray) -> list[float]:
    alpha, beta_l, beta_r = _aggd(block)
    feat = [alpha, (beta_l + beta_r) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, beta_l, beta_r = _aggd(block * np.roll(block, shift, axis=(0, 1)))
        mean = (beta_r - beta_l) * (gamma(2 / alpha) / gamma(1 / alpha))
        feat += [alpha, mean, beta_l, beta_r]
    return feat


def niqe_gray(img: np.ndarray, params_path: str | Path = DEFAULT_PARAMS, block: int = 96) -> float:
    """NIQE of a float64 grey image in [0, 255]."""
    mu_pris, cov_pris, window = load_params(params_path)
    nh, nw = img.shape[0] // block, img.shape[1] // block
    if nh == 0 or nw == 0:
        raise ValueError(f"NIQE needs at least {block}x{block} pixels, got {img.shape}")
    img = img[: nh * block, : nw * block]
    dist = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img * img, window, mode="nearest") - mu * mu))
        norm = (img - mu) / (sigma + 1)
        b = block // scale
        dist.append(
            np.array([_features(norm[i * b : (i + 1) * b, j * b : (j + 1) * b]) for j in range(nw) for i in range(nh)])
        )
        if scale == 1:
            half = Image.fromarray(img.astype(np.float32), mode="F").resize(
                (img.shape[1] // 2, img.shape[0] // 2), Image.BICUBIC
            )
            img = np.asarray(half, dtype=np.float64)
    dist = np.concatenate(dist, axis=1)
    mu_dist = np.nanmean(dist, axis=0)
    cov_dist = np.cov(dist[~np.isnan(dist).any(axis=1)], rowvar=False)
    diff = mu_pris - mu_dist
    return float(np.sqrt(diff @ np.linalg.pinv((cov_pris + cov_dist) / 2) @ diff.T).squeeze())


def niqe(image: np.ndarray, shave: int = 0, params_path: str | Path = DEFAULT_PARAMS) -> float:
    """NIQE of a uint8 RGB image on its Y channel, ``shave`` pixels cropped at each border."""
    y = rgb_to_y(image)
    if shave:
        y = y[shave:-shave, shave:-shave]
    return niqe_gray(np.round(y), params_path)
