"""How PMG conditions Stable Diffusion: target keywords, preference keywords and the soft embedding.

Shared by training and generation so both see exactly the same context. Each group is encoded separately
(the keyword groups by SD's frozen CLIP text encoder) and scaled by its weight (w_t, w_p, w_s), then the
groups are concatenated along the token axis: the UNet's cross-attention reads all of them.

A keyword group is one window of the text encoder (``tokenizer_max_length`` tokens) by default, longer texts
cut; with ``chunks`` it is that many windows, each BOS + up to (window - 2) tokens of the text + EOS, padded,
encoded on its own and laid end to end (:func:`chunk_token_ids`): the official demo's long-prompt handling
(MindONE's ``utils/long_prompt.py``), with a fixed window count so shapes stay static.
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


def encode_texts(text_encoder, tokenizer, texts: list[str], max_length: int, batch_size: int = 16,
                 chunks: int = 0) -> np.ndarray:
    """CLIP-text hidden states of ``texts`` as float32 ``(len(texts), max_length, ctx_dim)``.

    Used once per distinct keyword text (the text encoder is frozen), so training never re-encodes them.
    With ``chunks`` > 0 each text takes ``chunks`` windows of ``max_length`` tokens
    (:func:`chunk_token_ids`) and the result is ``(len(texts), chunks * max_length, ctx_dim)``; 0 keeps one
    window and cuts what does not fit.
    """
    if chunks:
        ids = chunk_token_ids(tokenizer, texts, max_length, chunks).reshape(len(texts) * chunks, max_length)
        rows = _encode_ids(text_encoder, ids, batch_size)
        return rows.reshape(len(texts), chunks * max_length, rows.shape[-1])
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids = tokenizer(chunk, padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="np").input_ids
        hidden = text_encoder(ms.Tensor(ids, ms.int32))[0]
        out.append(hidden.astype(ms.float32).asnumpy())
    return np.concatenate(out, axis=0)


def chunk_token_ids(tokenizer, texts: list[str], window: int, chunks: int) -> np.ndarray:
    """Token ids ``(len(texts), chunks, window)`` int32: each text cut into windows the text encoder reads alone.

    The text's tokens (no special tokens) go in order, ``window - 2`` per window, each window framed by BOS and
    EOS and padded after EOS with the tokenizer's pad token, as the official demo lays out a long prompt. A
    text takes ``max(1, ceil(tokens / (window - 2)))`` windows (an empty text one: BOS, EOS, padding); the
    windows it does not fill hold that empty window, as the official code pads a batch and the negative
    prompt to the same count. Tokens past ``chunks`` full windows are dropped.
    """
    if window < 3:
        raise ValueError(f"a text-encoder window of {window} tokens has no room for text between BOS and EOS")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    body = window - 2
    out = np.full((len(texts), chunks, window), pad, np.int32)
    out[:, :, 0], out[:, :, 1] = bos, eos  # every window starts empty
    pieces = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False).input_ids
    for row, tokens in enumerate(pieces):
        for c, start in enumerate(range(0, min(len(tokens), chunks * body), body)):
            piece = tokens[start:start + body]
            out[row, c, 1:1 + len(piece)] = piece
            out[row, c, 1 + len(piece)] = eos
    return out


def _encode_ids(text_encoder, ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Hidden states ``(rows, window, ctx_dim)`` float32 of token ids ``(rows, window)``.

    Every call has exactly ``batch_size`` rows (the last one filled up with copies of the first row, whose
    outputs are dropped): windows are encoded one per row, independently, so a graph compiles once whatever
    the number of texts.
    """
    rows = len(ids)
    padded = np.concatenate([ids, np.repeat(ids[:1], -rows % batch_size, axis=0)])
    out = []
    for start in range(0, len(padded), batch_size):
        hidden = text_encoder(ms.Tensor(np.ascontiguousarray(padded[start:start + batch_size]), ms.int32))[0]
        out.append(hidden.astype(ms.float32).asnumpy())
    return np.concatenate(out, axis=0)[:rows]
