"""Reading images for evaluation: one RGB conversion and one resize policy for every metric and method.

Every image mode is read as 8-bit RGB by :func:`research.pmg.image_modes.to_rgb`: 16-bit images scaled to 8
bits (not clipped to white), palettes expanded, and transparent pixels (sticker PNGs) composited over white.
LPIPS and SSIM compare pixel grids, so both images of a pair are brought to ``image_size`` x ``image_size``
first:

- ``center_crop`` (default): the centred square of the shorter side, then a bicubic resize; the crop the
  training stage applies to target images, so generated and reference images are framed alike;
- ``squash``: a bicubic resize of the whole image to the square, changing the aspect ratio.

CLIP does its own preprocessing (see :mod:`research.pmg.evaluate.clip_metrics`) on :func:`load_rgb` output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from research.pmg.errors import PMGError
from research.pmg.image_modes import to_rgb

RESIZE_POLICIES = ("center_crop", "squash")
RESAMPLE, RESAMPLE_NAME = Image.BICUBIC, "bicubic"


def load_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (:func:`research.pmg.image_modes.to_rgb`: 16-bit scaled, transparency
    composited over white); fully decoded (file closed)."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PMGError(f"{path}: cannot read image: {exc}") from None


def fit(img: Image.Image, size: int, policy: str) -> np.ndarray:
    """``img`` brought to ``(size, size, 3)`` uint8 by ``policy`` (see the module docstring)."""
    if policy == "center_crop":
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    elif policy != "squash":
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if img.size != (size, size):
        img = img.resize((size, size), RESAMPLE)
    return np.asarray(img, dtype=np.uint8)


def load_fitted(path: str | Path, size: int, policy: str) -> np.ndarray:
    """:func:`load_rgb` then :func:`fit`: ``(size, size, 3)`` uint8."""
    return fit(load_rgb(path), size, policy)


def to_signed(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, h, w, 3)`` -> float32 ``(n, 3, h, w)`` in [-1, 1], the LPIPS input convention."""
    return (images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32)
