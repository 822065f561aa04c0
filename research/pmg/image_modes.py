"""Every image mode read one way, as 8-bit RGB: the rule the data stage's check of raw images
(:mod:`research.pmg.data.images`) and every later stage's reader (:mod:`research.pmg.images`) share.

- 8-bit grey and colour (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``HSV``): Pillow's conversion to RGB
  (CMYK: R = (255 - C)(255 - K) / 255, rounded);
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; and ``I``, which holds 16-bit PGM/TIFF samples): the
  high byte, ``v >> 8``, the rule Pillow itself applies to 16-bit RGB(A) PNGs, so a grey picture reads the same
  whichever layout stores it. Pillow's own conversion clips at 255, which made nearly every pixel of a 16-bit
  image white. ``I`` values outside 0..65535 are clipped;
- float grey (``F``): :func:`float_to_uint8`, the rule for float arrays too;
- transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, and any mode with a ``transparency`` entry: a palette's
  transparent indices, the colour key of an ``L``, ``RGB`` or 16-bit PNG) is composited over white: dropping the
  alpha channel would show whatever colour the file stores under alpha 0 (Twemoji: dark green), which no viewer
  shows.

Anything else (``LAB``, whose conversion Pillow does channel by channel, giving wrong colours) raises
``ValueError``; callers report it with the file's name.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_PILLOW_CONVERTS = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV")


def sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535; anything outside is clipped) -> uint8, the high byte."""
    return (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float samples -> uint8: read as 0..1 when their maximum is <= 1, else as 0..255; clipped, rounded.

    Raises ``ValueError`` for NaN or infinity, which no pixel value can stand for.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image has NaN or infinite values")
    scale = 255.0 if values.size and float(values.max()) <= 1.0 else 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` (fully loaded, any mode) as 8-bit RGB by the rules of the module docstring; transparency is
    composited over white. Raises ``ValueError`` for a mode with no faithful RGB reading."""
    mode, key = img.mode, img.info.get("transparency")
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        values = np.asarray(img)
        grey = Image.fromarray(float_to_uint8(values) if mode == "F" else sixteen_bit_to_uint8(values), "L")
        if isinstance(key, int) and mode != "F":  # a 16-bit colour key names the exact transparent sample
            return _over_white(grey.convert("RGB"), Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8)))
        return grey.convert("RGB")
    if mode in ALPHA_MODES or (key is not None and mode in ("L", "P", "RGB")):
        rgba = img.convert("RGBA")
        return _over_white(rgba.convert("RGB"), rgba.getchannel("A"))
    if mode not in _PILLOW_CONVERTS:
        raise ValueError(f"image mode {mode} has no RGB reading here (save it as RGB)")
    return img.convert("RGB")


def _over_white(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
    out = Image.new("RGB", rgb.size, BACKGROUND)
    out.paste(rgb, mask=alpha)
    return out
