"""How PMG conditions Stable Diffusion: target keywords, preference keywords and the soft embedding.

Shared by training and generation so both see exactly the same context. Each group is encoded separately
(the keyword groups by SD's frozen CLIP text encoder) and scaled by its weight (w_t, w_p, w_s), then the
groups are concatenated along the token axis: the UNet's cross-attention reads all of them.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import ops


def assemble_context(target, preference, soft, target_weight=1.0, preference_weight=1.0, soft_weight=1.0):
    """Concatenate the weighted groups that are present (``None`` groups are left out).

    target, preference: ``(batch, n_text, ctx_dim)`` CLIP-text hidden states; soft: ``(batch, L, ctx_dim)``.
    Returns ``(batch, n_present_tokens, ctx_dim)``. Leaving a group out is different from weight 0: a zero
    group would still take part in the attention softmax, so baselines drop it.
    """
    groups = []
    if target is not None:
        groups.append(target * target_weight)
    if preference is not None:
        groups.append(preference * preference_weight)
    if soft is not None:
        groups.append(soft.astype(target.dtype if target is not None else soft.dtype) * soft_weight)
    return ops.concat(groups, axis=1) if len(groups) > 1 else groups[0]


def encode_texts(text_encoder, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> np.ndarray:
    """CLIP-text hidden states of ``texts`` as float32 ``(len(texts), max_length, ctx_dim)``.

    Used once per distinct keyword text (the text encoder is frozen), so training never re-encodes them.
    """
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids = tokenizer(chunk, padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="np").input_ids
        hidden = text_encoder(ms.Tensor(ids, ms.int32))[0]
        out.append(hidden.astype(ms.float32).asnumpy())
    return np.concatenate(out, axis=0)
