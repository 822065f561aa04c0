"""Training inputs, computed once and cached: prompt ids, VAE latent moments, CLIP-text keyword contexts.

Everything the frozen models compute from a sample is the same at every step, so it is computed once per
dataset (VAE encoding of the target image, SD text encoding of the keyword texts) and stored as ``.npy``
files keyed by a hash of what produced them. A training step then runs only the parts that learn: the
bias-correction LLM and the UNet.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from research.pmg.errors import PMGError
from research.pmg.examples import Example
from research.pmg.integrity import sha256_file

CACHE_VERSION = 3  # 2: transparent pixels composited over white; 3: prompt ids right-padded


@dataclass
class TrainingArrays:
    """Aligned per-example arrays (row i belongs to ``sample_ids[i]``), memory-mapped from the cache."""

    sample_ids: list[str]
    splits: list[str]
    prompt_ids: np.ndarray  # (n, prompt_len) int32, right-padded
    latent_moments: np.ndarray  # (n, 2 * latent_channels, h, w) float32: VAE mean and log-variance
    target_ctx: np.ndarray  # (n, n_text, ctx_dim) float32
    pref_ctx: np.ndarray  # (n, n_text, ctx_dim) float32

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)


def load_image(path: Path, size: int) -> np.ndarray:
    """The target image as the model sees it: ``(3, size, size)`` float32 in [-1, 1].

    Read exactly as evaluation reads it (transparency over white, centred square crop, bicubic resize), so
    the soft preference is trained toward the images it is later scored against.
    """
    from research.pmg.images import load_fitted, to_signed

    return to_signed(load_fitted(path, size, "center_crop")[None])[0]


def cache_key(examples: list[Example], fingerprint: dict) -> str:
    """Hash of the examples' texts, image bytes' identity and the models' fingerprint."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode())
    digest.update(str(CACHE_VERSION).encode())
    for ex in examples:
        stat = ex.target_image.stat()
        digest.update(json.dumps([ex.sample_id, ex.split, ex.history_prompt, ex.target_text, ex.preference_text,
                                  str(ex.target_image), stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()[:16]


def build_arrays(examples: list[Example], cache_dir: Path, fingerprint: dict, *, tokenize, encode_images,
                 encode_texts) -> TrainingArrays:
    """Compute (or load) the cached arrays for ``examples``.

    ``tokenize(prompts) -> (n, prompt_len)``, ``encode_images(paths) -> (n, 2c, h, w)`` and
    ``encode_texts(texts) -> (n, n_text, ctx_dim)`` are the frozen models. The cache folder is written to a
    temporary sibling and renamed, so an interrupted build is never read.
    """
    if not examples:
        raise PMGError("no training examples: the prepared dataset has no samples with keywords")
    folder = cache_dir / f"train-{cache_key(examples, fingerprint)}"
    if (folder / "index.json").is_file() and not _cache_intact(folder):  # damaged: rebuilt, never loaded
        print(f"warning: {folder}: cached arrays do not match their checksums; rebuilding them", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "index.json").is_file():
        tmp = cache_dir / f".{folder.name}.{os.getpid()}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        arrays = {
            "prompt_ids": tokenize([ex.history_prompt for ex in examples]),
            "latent_moments": encode_images([ex.target_image for ex in examples]),
            "target_ctx": encode_texts([ex.target_text for ex in examples]),
            "pref_ctx": encode_texts([ex.preference_text for ex in examples]),
        }
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", value)
        index = {"sample_ids": [ex.sample_id for ex in examples], "splits": [ex.split for ex in examples],
                 "fingerprint": fingerprint, "version": CACHE_VERSION,
                 "sha256": {name: sha256_file(tmp / f"{name}.npy") for name in arrays}}
        (tmp / "index.json").write_text(json.dumps(index, sort_keys=True))
        try:
            os.replace(tmp, folder)
        except OSError:  # another worker finished the same cache first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    index = json.loads((folder / "index.json").read_text())
    load = lambda name: np.load(folder / f"{name}.npy", mmap_mode="r")  # noqa: E731
    return TrainingArrays(sample_ids=index["sample_ids"], splits=index["splits"], prompt_ids=load("prompt_ids"),
                          latent_moments=load("latent_moments"), target_ctx=load("target_ctx"),
                          pref_ctx=load("pref_ctx"))


def _cache_intact(folder: Path) -> bool:
    """Every cached array still has the checksum recorded when it was written (caches without any are trusted)."""
    try:
        sums = json.loads((folder / "index.json").read_text()).get("sha256", {})
        return all(sha256_file(folder / f"{name}.npy") == digest for name, digest in sums.items())
    except (OSError, ValueError, AttributeError):
        return False


def batch_indices(n: int, step: int, micro: int, grad_accum: int, global_batch: int, seed: int) -> np.ndarray:
    """The example rows of one global micro-batch: a function of the step alone, so resume is exact.

    Epochs are seeded permutations of ``range(n)``; the last incomplete global batch of an epoch is dropped
    (or, when ``n`` is smaller than a batch, examples repeat within it).
    """
    per_epoch = max(n // global_batch, 1)
    flat = step * grad_accum + micro
    epoch, pos = divmod(flat, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if n < global_batch:
        order = np.resize(order, global_batch)
    return order[pos * global_batch:(pos + 1) * global_batch]


def step_noise(shape: tuple[int, ...], num_timesteps: int, step: int, micro: int, seed: int, stream: int = 0):
    """Noise ``shape``, timesteps ``(shape[0],)`` and latent-sampling noise for one global micro-batch.

    Drawn for the global batch and sliced per rank by the caller, so N workers see the same numbers as one
    worker with the whole batch.
    """
    rng = np.random.default_rng([seed, stream, step, micro])
    noise = rng.standard_normal(shape).astype(np.float32)
    timesteps = rng.integers(0, num_timesteps, size=shape[0]).astype(np.int32)
    latent_eps = rng.standard_normal(shape).astype(np.float32)
    return noise, timesteps, latent_eps


def negative_rows(rows: np.ndarray, pool: np.ndarray, shape: tuple[int, ...], step: int, micro: int, seed: int,
                  stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For the negative-item term: per row, another row of ``pool`` (never itself when the pool has two or more),
    and the latent-sampling noise of those negatives ``shape``. A function of the step, like :func:`step_noise`
    (a stream of its own, so turning the term on changes none of the other draws)."""
    rng = np.random.default_rng([seed, stream, step, micro, 1])
    pool = np.asarray(pool)
    where = np.searchsorted(pool, rows)
    offsets = rng.integers(1, max(len(pool), 2), size=len(rows))
    return pool[(where + offsets) % len(pool)], rng.standard_normal(shape).astype(np.float32)


def sample_latents(moments: np.ndarray, eps: np.ndarray, scaling: float) -> np.ndarray:
    """Draw from the VAE's diagonal Gaussian (as SD training does), scaled: ``(b, c, h, w)``."""
    channels = moments.shape[1] // 2
    mean, logvar = moments[:, :channels], np.clip(moments[:, channels:], -30.0, 20.0)
    return ((mean + np.exp(0.5 * logvar) * eps) * scaling).astype(np.float32)
