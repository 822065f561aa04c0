"""Caption retrieval with CLIP features: does an image's nearest caption name it (or at least its theme)?"""
from __future__ import annotations

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def retrieval_metrics(image_features: np.ndarray, text_features: np.ndarray, true_rows: np.ndarray,
                      text_themes: list[str]) -> dict[str, float]:
    """Image i should retrieve caption ``true_rows[i]`` among all ``text_features`` (cosine similarity).

    ``top1``/``top5``: the true caption is the nearest / among the 5 nearest; ``theme``: the nearest caption has
    the true caption's theme. Chance levels: ``1/n``, ``5/n`` and the share of each image's theme among the
    captions (averaged), as a classifier guessing captions uniformly would score.
    """
    sims = normalise(image_features) @ normalise(text_features).T
    order = np.argsort(-sims, axis=1, kind="stable")
    true_rows = np.asarray(true_rows)
    themes = np.asarray(text_themes)
    n = len(text_features)
    share = {t: float(np.mean(themes == t)) for t in set(text_themes)}
    return {
        "top1": float(np.mean(order[:, 0] == true_rows)),
        "top5": float(np.mean([t in row[:5] for t, row in zip(true_rows, order)])),
        "theme": float(np.mean(themes[order[:, 0]] == themes[true_rows])),
        "num_images": int(len(image_features)),
        "num_captions": int(n),
        "chance_top1": 1.0 / n,
        "chance_top5": min(5, n) / n,
        "chance_theme": float(np.mean([share[t] for t in themes[true_rows]])),
    }
