"""SSIM (Wang et al., 2004) with fixed settings, batched over image pairs in NumPy.

The settings are those of ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255, channel_axis=-1)`` on uint8 RGB images, and the result equals
it (the tests check 1e-6 on real photos; the arithmetic is the same, so in practice ~1e-16):

- a Gaussian window, sigma 1.5, truncated at 3.5 sigma (11 taps), ``reflect`` borders;
- population (not sample) covariances, as in Wang et al.;
- K1 = 0.01, K2 = 0.03 and an explicit data range of 255 (images are uint8 after the resize policy);
- SSIM per RGB channel, averaged; the map is averaged without the 5-pixel border the window cannot cover.

Different SSIM settings move scores by as much as the gaps between methods, so :data:`SETTINGS` is written
next to every result. Both images of a pair must have the same size (see :mod:`research.pmg.images`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

TRUNCATE = 3.5


@dataclass(frozen=True)
class SSIMSettings:
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03
    data_range: float = 255.0
    use_sample_covariance: bool = False
    channels: str = "rgb, averaged"
    truncate: float = TRUNCATE
    border: str = "reflect"

    @property
    def win_size(self) -> int:
        return 2 * int(self.truncate * self.sigma + 0.5) + 1

    def to_dict(self) -> dict:
        return {**asdict(self), "win_size": self.win_size, "gaussian_weights": True,
                "reference": f"skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma={self.sigma}, "
                             f"use_sample_covariance={self.use_sample_covariance}, data_range={self.data_range:g}, "
                             f"K1={self.k1}, K2={self.k2}, channel_axis=-1)"}


SETTINGS = SSIMSettings()


def ssim(a: np.ndarray, b: np.ndarray, settings: SSIMSettings = SETTINGS) -> np.ndarray:
    """SSIM of each pair: ``a``, ``b`` uint8 ``(n, h, w, 3)`` -> ``(n,)`` float64 (one ``(h, w, 3)`` pair -> float).

    1 for identical images; symmetric in ``a`` and ``b``.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs images of one size, got {a.shape} and {b.shape}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"expected (n, h, w, channels) images, got shape {a.shape}")
    win = settings.win_size
    if min(a.shape[1:3]) < win:
        raise ValueError(f"images of {a.shape[1]}x{a.shape[2]} are smaller than the {win}x{win} SSIM window")
    x, y = a.astype(np.float64), b.astype(np.float64)
    sigma = (0.0, settings.sigma, settings.sigma, 0.0)  # filter height and width only

    def blur(img: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(img, sigma=sigma, mode=settings.border, truncate=settings.truncate)

    ux, uy = blur(x), blur(y)
    uxx, uyy, uxy = blur(x * x), blur(y * y), blur(x * y)
    cov_norm = win * win / (win * win - 1) if settings.use_sample_covariance else 1.0
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (settings.k1 * settings.data_range) ** 2, (settings.k2 * settings.data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    # Mean per channel, then over channels: the channels have equal size, so one mean is the same number.
    per_channel = s[:, pad:s.shape[1] - pad, pad:s.shape[2] - pad, :].mean(axis=(1, 2), dtype=np.float64)
    out = per_channel.mean(axis=1)
    return float(out[0]) if single else out
