"""Balancing personalization and accuracy (paper section 3.3): score candidates, pick the best. NumPy only.

For a generated image M with CLIP embedding e_M, preference-text embedding e_p and target-text embedding e_t:
personalization d_p = cos(e_M, e_p), accuracy d_t = cos(e_M, e_t), and

    log form (the paper's):      z = a * log d_p + (1 - a) * log d_t
    linear form (press summary): z = a * d_p + (1 - a) * d_t

Rules that make z defined for every candidate:

- Non-positive cosines (log form): a cosine at or below :data:`COSINE_FLOOR` is raised to it before the log.
  Such an image is orthogonal or opposite to that text; the floor makes it lose to any candidate with a
  clearly positive cosine on that side while the other term still orders the floored candidates among
  themselves. z stays finite (the manifest is plain JSON, which has no -inf or NaN).
- A term with weight 0 (a = 0 or a = 1) is left out, not multiplied by 0: its cosine cannot affect z.
- Ties in z (the floor makes them common when a text is far from every candidate) are broken by the linear
  form, which orders the same way without a floor; remaining ties go to the first candidate in generation
  order (weight set, then image).
- A non-finite cosine means a broken image or model (e.g. fp16 overflow); it raises instead of being scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COSINE_FLOOR = 1e-6


@dataclass(frozen=True)
class Selection:
    """Scores of every candidate, shape ``(n,)`` each, and the index of the chosen one."""

    personalization: np.ndarray  # d_p
    accuracy: np.ndarray  # d_t
    z: np.ndarray
    chosen: int


def cosine_similarity(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``vectors (n, d)`` with ``reference (d,)``: ``(n,)`` float64.

    A zero vector has no direction; its cosine is 0 rather than NaN.
    """
    vectors = np.asarray(vectors, np.float64)
    reference = np.asarray(reference, np.float64)
    norms = np.linalg.norm(vectors, axis=-1) * np.linalg.norm(reference)
    dots = vectors @ reference
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def balance_score(personalization, accuracy, a: float = 0.5, form: str = "log") -> np.ndarray:
    """z of every candidate from d_p and d_t ``(n,)`` (see the module docstring for the rules)."""
    d_p = np.asarray(personalization, np.float64)
    d_t = np.asarray(accuracy, np.float64)
    if d_p.shape != d_t.shape:
        raise ValueError(f"d_p and d_t must have the same shape, got {d_p.shape} and {d_t.shape}")
    if not (np.all(np.isfinite(d_p)) and np.all(np.isfinite(d_t))):
        raise ValueError("a CLIP cosine is not finite: the generated image or the scorer produced NaN/Inf")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"a must be in [0, 1], got {a}")
    if form == "linear":
        transform = lambda d: d  # noqa: E731
    elif form == "log":
        transform = lambda d: np.log(np.maximum(d, COSINE_FLOOR))  # noqa: E731
    else:
        raise ValueError(f"score form must be 'log' or 'linear', got {form!r}")
    z = np.zeros_like(d_p)
    if a > 0:
        z = z + a * transform(d_p)
    if a < 1:
        z = z + (1.0 - a) * transform(d_t)
    return z


def select(personalization, accuracy, a: float = 0.5, form: str = "log") -> Selection:
    """Score every candidate and choose the argmax of z (ties: linear form, then the first candidate)."""
    z = balance_score(personalization, accuracy, a, form)
    if z.ndim != 1 or z.size == 0:
        raise ValueError(f"need a non-empty vector of candidates, got shape {z.shape}")
    linear = balance_score(personalization, accuracy, a, "linear")
    chosen = max(range(z.size), key=lambda i: (z[i], linear[i], -i))
    return Selection(personalization=np.asarray(personalization, np.float64), accuracy=np.asarray(accuracy, np.float64),
                     z=z, chosen=int(chosen))
