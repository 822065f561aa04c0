"""Per-sample scores of one method: each generated image against every history image (averaged) and the target.

History scores measure personalization, target scores accuracy (as in the paper's evaluation). For one sample with
history h_1..h_n, target t and generated image g:

- ``lpips_history`` = mean_i LPIPS(g, h_i), ``lpips_target`` = LPIPS(g, t)  (lower = more similar);
- ``ssim_history``, ``ssim_target`` likewise with SSIM  (higher = more similar);
- ``clip_image_history`` = mean_i s(g, h_i), ``clip_image_target`` = s(g, t), ``clip_text_preference`` =
  s(g, k_p), ``clip_text_target`` = s(g, k_t), with s the scaled CLIP cosine (higher = more similar).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from research.pmg import images as im
from research.pmg.evaluate.ssim import SSIMSettings, ssim
from research.pmg.records.samples import PreparedData, Sample


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    family: str  # "lpips", "ssim" or "clip": the evaluate.metrics entry that computes it
    higher_is_closer: bool


METRICS = (
    Metric("lpips_history", "LPIPS vs history", "lpips", False),
    Metric("lpips_target", "LPIPS vs target", "lpips", False),
    Metric("ssim_history", "SSIM vs history", "ssim", True),
    Metric("ssim_target", "SSIM vs target", "ssim", True),
    Metric("clip_image_history", "CLIP image vs history", "clip", True),
    Metric("clip_image_target", "CLIP image vs target", "clip", True),
    Metric("clip_text_preference", "CLIP text vs preference keywords", "clip", True),
    Metric("clip_text_target", "CLIP text vs target keywords", "clip", True),
)


def metrics_for(families: list[str]) -> list[Metric]:
    return [m for m in METRICS if m.family in families]


class PairScorer:
    """LPIPS and/or SSIM of image pairs: ``(n, s, s, 3)`` uint8 each -> ``{metric family: (n,)}``.

    LPIPS runs in batches of exactly ``batch_size`` pairs (the last one padded), so its graph compiles once.
    """

    def __init__(self, *, lpips_model=None, ssim_settings: SSIMSettings | None = None, batch_size: int = 8):
        self.lpips_model, self.ssim_settings, self.batch_size = lpips_model, ssim_settings, batch_size

    def __call__(self, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        if self.ssim_settings is not None:
            out["ssim"] = np.concatenate([ssim(a[i:i + self.batch_size], b[i:i + self.batch_size], self.ssim_settings)
                                          for i in range(0, len(a), self.batch_size)])
        if self.lpips_model is not None:
            out["lpips"] = self.lpips(a, b)
        return out

    def lpips(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import mindspore as ms

        values = []
        for start in range(0, len(a), self.batch_size):
            x, y = a[start:start + self.batch_size], b[start:start + self.batch_size]
            real = len(x)
            if real < self.batch_size:
                pad = np.zeros((self.batch_size - real, *x.shape[1:]), x.dtype)
                x, y = np.concatenate([x, pad]), np.concatenate([y, pad])
            d = self.lpips_model(ms.Tensor(im.to_signed(x)), ms.Tensor(im.to_signed(y)))
            values.append(d.asnumpy().astype(np.float64)[:real])
        return np.concatenate(values)


@dataclass
class ClipReferences:
    """Unit CLIP embeddings of what generated images are compared with: item images and keyword texts."""

    items: dict[str, np.ndarray]  # item id -> (d,)
    preference: dict[str, np.ndarray]  # sample id -> (d,), samples with preference keywords only
    target: dict[str, np.ndarray]  # sample id -> (d,), samples with target keywords only


def clip_references(embedder, samples: list[Sample], data: PreparedData, keywords: Mapping[str, Any],
                    progress: Callable = lambda x, **_: x) -> ClipReferences:
    """Embed every history/target image and keyword text of ``samples`` once (shared by all methods)."""
    item_ids = sorted({i for s in samples for i in (*s.history, s.target)})
    features = []
    for start in progress(range(0, len(item_ids), 64), desc="clip references"):
        chunk = item_ids[start:start + 64]
        features.append(embedder.images([im.load_rgb(data.image_path(i)) for i in chunk]))
    items = dict(zip(item_ids, np.concatenate(features))) if item_ids else {}
    texts: dict[str, dict[str, str]] = {"preference": {}, "target": {}}
    for sample in samples:
        record = keywords.get(sample.id)
        if record is None:
            continue
        for kind, words in (("preference", record.preference_keywords), ("target", record.target_keywords)):
            if words:
                texts[kind][sample.id] = ", ".join(words)
    unique = sorted({t for group in texts.values() for t in group.values()})
    embedded = dict(zip(unique, embedder.texts(unique))) if unique else {}
    return ClipReferences(items=items, **{kind: {sid: embedded[t] for sid, t in group.items()}
                                          for kind, group in texts.items()})


def score_method(samples: list[Sample], images: Mapping[str, Path], data: PreparedData, *, image_size: int,
                 resize: str, pairs: PairScorer | None, embedder=None, references: ClipReferences | None = None,
                 clip_scale: float = 1.0, clip_clamp: bool = False, chunk: int = 16,
                 progress: Callable = lambda x, **_: x, desc: str = "") -> list[dict[str, Any]]:
    """One record per sample of ``samples`` that has an image in ``images``: ids, image path and every metric."""
    from research.pmg.evaluate.clip_metrics import to_score

    todo = [s for s in samples if s.id in images]
    records = []
    for start in progress(range(0, len(todo), chunk), desc=desc):
        batch = todo[start:start + chunk]
        generated = [im.load_rgb(images[s.id]) for s in batch]
        rows = [{"sample": s.id, "user": s.user_id, "target": s.target, "image": str(images[s.id]),
                 "n_history": len(s.history)} for s in batch]
        if pairs is not None:
            fitted = [im.fit(g, image_size, resize) for g in generated]
            a, b, owner, is_target = [], [], [], []
            for row, (sample, gen) in enumerate(zip(batch, fitted)):
                for item_id, target in [*((h, False) for h in sample.history), (sample.target, True)]:
                    a.append(gen)
                    b.append(im.load_fitted(data.image_path(item_id), image_size, resize))
                    owner.append(row)
                    is_target.append(target)
            scores = pairs(np.stack(a), np.stack(b))
            owner, is_target = np.array(owner), np.array(is_target)
            for family, values in scores.items():
                for row in range(len(batch)):
                    mine = owner == row
                    history = values[mine & ~is_target]
                    rows[row][f"{family}_history"] = float(history.mean()) if len(history) else float("nan")
                    rows[row][f"{family}_target"] = float(values[mine & is_target][0])
        if embedder is not None:
            gen_features = embedder.images(generated)
            for row, (sample, g) in enumerate(zip(batch, gen_features)):
                hist = [float(to_score(references.items[i] @ g, clip_scale, clip_clamp)) for i in sample.history]
                rows[row]["clip_image_history"] = float(np.mean(hist)) if hist else float("nan")
                rows[row]["clip_image_target"] = float(to_score(references.items[sample.target] @ g, clip_scale,
                                                                clip_clamp))
                for kind in ("preference", "target"):
                    text = getattr(references, kind).get(sample.id)
                    rows[row][f"clip_text_{kind}"] = float("nan") if text is None else \
                        float(to_score(text @ g, clip_scale, clip_clamp))
        records += rows
    return records
