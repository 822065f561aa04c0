"""The CLIP scorer: d_p and d_t of generated images, with a model loaded once per run.

Images are preprocessed by ``transformers.CLIPImageProcessor`` (the checkpoint's ``preprocessor_config.json``
when the CLIP folder has one, else OpenAI CLIP's resize / centre-crop / normalisation at the model's input
size); texts by the CLIP tokenizer, padded to the text tower's length. Features come from MindONE's
``CLIPModel`` through two small cells, so each compiles once in graph mode.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn

from research.pmg.generate.select import Selection, cosine_similarity, select
from research.pmg.models.clip import ClipParts, clip_image_processor  # noqa: F401  (re-exported)


class _ImageFeatures(nn.Cell):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, pixels):
        return self.model.get_image_features(pixels)


class _TextFeatures(nn.Cell):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, ids):
        return self.model.get_text_features(ids)


class ClipScorer:
    """Personalization d_p = cos(image, preference text) and accuracy d_t = cos(image, target text)."""

    def __init__(self, parts: ClipParts, processor):
        self.parts, self.processor = parts, processor
        self.dtype = parts.model.dtype if hasattr(parts.model, "dtype") else ms.float32
        self._image = _ImageFeatures(parts.model)
        self._text = _TextFeatures(parts.model)

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``(n, H, W, 3)`` -> CLIP image embeddings ``(n, projection_dim)`` float32."""
        pixels = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return self._image(ms.Tensor(pixels).astype(self.dtype)).astype(ms.float32).asnumpy()

    def text_features(self, texts: list[str]) -> np.ndarray:
        """Texts -> CLIP text embeddings ``(len(texts), projection_dim)`` float32."""
        tokenizer = self.parts.tokenizer
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="np").input_ids
        return self._text(ms.Tensor(ids, ms.int32)).astype(ms.float32).asnumpy()

    def similarities(self, images: np.ndarray, preference_text: str, target_text: str) -> tuple[np.ndarray, np.ndarray]:
        """(d_p, d_t), each ``(n,)`` float64, for uint8 images ``(n, H, W, 3)``."""
        image = self.image_features(images)
        preference, target = self.text_features([preference_text, target_text])
        return cosine_similarity(image, preference), cosine_similarity(image, target)

    def choose(self, images: np.ndarray, preference_text: str, target_text: str, a: float = 0.5,
               form: str = "log") -> Selection:
        """Score every candidate and pick the best (see :mod:`research.pmg.generate.select`)."""
        return select(*self.similarities(images, preference_text, target_text), a=a, form=form)
