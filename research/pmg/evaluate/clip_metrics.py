"""CLIP scores of generated images: against texts (preference and target keywords) and images (history, target).

Every score is the cosine similarity of L2-normalised CLIP embeddings, reported as ``scale * cos`` (``scale``
1: raw cosine, the default; 100: the "CLIP score" of torchmetrics); with ``clamp`` negative cosines count
as 0 first (CLIPScore of Hessel et al. clamps, the balancing score of generation does not). The model,
scale and clamping are written next to every result. Texts are the keyword lists joined with ", ", the
form training and generation condition on. Images are preprocessed by ``CLIPImageProcessor`` (the model
folder's ``preprocessor_config.json`` when it has one, else CLIP's standard settings at the model's image
size: bicubic resize of the shorter side, centre crop, OpenAI mean/std) from :func:`images.load_rgb`
output, independently of the LPIPS/SSIM resize policy.

Batches are padded to a fixed size and texts to the model's context length, so each graph compiles once.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import mindspore as ms
from mindspore import nn

from research.pmg.models.clip import ClipParts, clip_image_processor


class _ImageEmbedding(nn.Cell):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, pixels):
        return self.model.get_image_features(pixel_values=pixels)


class _TextEmbedding(nn.Cell):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, ids, mask):
        return self.model.get_text_features(input_ids=ids, attention_mask=mask)


def to_score(cosine, scale: float = 1.0, clamp: bool = False):
    """``scale * cos`` (``scale * max(cos, 0)`` with ``clamp``), elementwise."""
    cosine = np.asarray(cosine, dtype=np.float64)
    return scale * (np.maximum(cosine, 0.0) if clamp else cosine)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClipEmbedder:
    """Unit-length CLIP embeddings ``(n, projection_dim)`` float64 of PIL images and of texts."""

    def __init__(self, parts: ClipParts, *, batch_size: int, model_path: str = ""):
        self.parts, self.batch_size = parts, batch_size
        self.processor = clip_image_processor(parts, model_path)
        self.max_length = int(parts.model.config.text_config.max_position_embeddings)
        self._image = _ImageEmbedding(parts.model)
        self._text = _TextEmbedding(parts.model)
        self._dtype = parts.model.dtype

    def images(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, self.projection_dim))
        pixels = self.processor(images=images, return_tensors="np").pixel_values.astype(np.float32)
        return _unit(self._batched(lambda x: self._image(ms.Tensor(x).astype(self._dtype)), pixels))

    def texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.projection_dim))
        tokens = self.parts.tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                                      truncation=True, return_tensors="np")
        ids = tokens.input_ids.astype(np.int32)
        mask = tokens.attention_mask.astype(np.int32)
        both = np.concatenate([ids, mask], axis=1)
        n = ids.shape[1]
        return _unit(self._batched(lambda x: self._text(ms.Tensor(x[:, :n]), ms.Tensor(x[:, n:])), both))

    @property
    def projection_dim(self) -> int:
        return int(self.parts.model.config.projection_dim)

    def _batched(self, run, inputs: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            real = len(chunk)
            if real < self.batch_size:  # pad: one static shape, one compiled graph
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - real, axis=0)])
            out.append(run(chunk).astype(ms.float32).asnumpy()[:real])
        return np.concatenate(out)

    def describe(self, model_path: str) -> dict[str, Any]:
        """What produced the scores, for the report's settings."""
        p = self.processor
        return {"model": model_path or "random-init (models.clip text_config/vision_config)",
                "projection_dim": self.projection_dim, "image_size": self.parts.image_size,
                "text_max_length": self.max_length,
                "preprocessing": {"size": dict(p.size), "crop_size": dict(p.crop_size), "resample": int(p.resample),
                                  "image_mean": list(p.image_mean), "image_std": list(p.image_std)}}
