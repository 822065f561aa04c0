"""NumPy models of the LLM's attention with a P-Tuning v2 prefix: what FlashAttentionScore computes with the
arguments and mask the project builds, and what prefix attention should be. Shared by the unit test and by
``scripts/check_ascend.sh`` (which on a device also runs the kernel itself)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CORNERS = ("top_left", "bottom_right")  # where FlashAttentionScore may anchor its pre/next-token band


@dataclass(frozen=True)
class FlashArgs:
    """The FlashAttentionScore arguments of one attention layer, read from a built model."""

    pre_tokens: int
    next_tokens: int
    sparse_mode: int
    scale_value: float


def flash_args(llama) -> list[FlashArgs]:
    """The FlashAttentionScore arguments of every layer of a MindFormers Llama built with flash attention."""
    out = []
    for layer in llama.model.layers:
        prim = layer.attention.flash_attention.flash_attention
        out.append(FlashArgs(int(prim.pre_tokens), int(prim.next_tokens), int(prim.sparse_mode),
                             float(prim.scale_value)))
    return out


def flash_attention_score(q, k, v, attn_mask, args: FlashArgs, corner: str = "top_left") -> np.ndarray:
    """FlashAttentionScore in sparse_mode 0, as MindSpore documents it, in float64.

    q ``(B, N, S1, D)``, k and v ``(B, N, S2, D)``, attn_mask ``(B, 1, S1, S2)`` with 1 = discard. Only the band
    ``i - pre_tokens <= j - shift <= i + next_tokens`` is computed, ``shift`` being 0 when the band is counted
    from the top-left corner and ``S2 - S1`` from the bottom-right one; the mask applies on top. Rows with no
    key left give zeros. Returns ``(B, N, S1, D)``.
    """
    if args.sparse_mode != 0:
        raise ValueError(f"only sparse_mode 0 is modelled, got {args.sparse_mode}")
    s1, s2 = q.shape[2], k.shape[2]
    shift = 0 if corner == "top_left" else s2 - s1
    i, j = np.arange(s1)[:, None], np.arange(s2)[None, :] - shift
    band = (j >= i - args.pre_tokens) & (j <= i + args.next_tokens)
    keep = band[None, None] & (np.asarray(attn_mask) == 0)
    return _softmax_attention(q, k, v, keep, args.scale_value)


def prefix_attention(q, k_prefix, v_prefix, k, v, key_is_pad, scale: float) -> np.ndarray:
    """What P-Tuning v2 means: query i sees every prefix key and the non-padding sequence keys j <= i.

    q, k, v ``(B, N, S, D)``; k_prefix, v_prefix ``(B, N, P, D)``; key_is_pad ``(B, S)`` bool. Returns
    ``(B, N, S, D)``; queries with no visible key give zeros.
    """
    s, p = q.shape[2], k_prefix.shape[2]
    causal = np.tril(np.ones((s, s), bool))[None] & ~np.asarray(key_is_pad, bool)[:, None, :]
    keep = np.concatenate([np.ones((q.shape[0], s, p), bool), causal], axis=2)[:, None]
    return _softmax_attention(q, np.concatenate([k_prefix, k], 2), np.concatenate([v_prefix, v], 2), keep, scale)


def _softmax_attention(q, k, v, keep, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.where(keep, np.einsum("bnqd,bnkd->bnqk", q, k) * scale, -np.inf)
    top = np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(axis=-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bnqk,bnkd->bnqd", weights, v)


def project_mask(llama, tokens: np.ndarray, prefix_len: int) -> np.ndarray:
    """The mask MindFormers' LlamaModel hands its flash attention for ``tokens`` ``(B, S)`` with a prefix.

    Its causal-mask cell (keys equal to ``pad_token_id`` and above the diagonal: 1 = discard) run as built, then
    ``prefix_len`` zero (keep) columns in front, as ``LlamaModel.construct`` concatenates them. ``(B, 1, S, P+S)``.
    """
    import mindspore as ms

    causal = llama.model.casual_mask(ms.Tensor(np.asarray(tokens, np.int32))).asnumpy()
    zeros = np.zeros(causal.shape[:3] + (prefix_len,), causal.dtype)
    return np.concatenate([zeros, causal], axis=-1)


def band_errors(llama, tokens: np.ndarray, prefix_len: int, pad_token_id: int, args: FlashArgs,
                seed: int = 0) -> dict[str, float]:
    """Max |FlashAttentionScore model - ordinary prefix attention| per band corner, on random q, k, v and prefix
    keys/values for ``tokens`` ``(B, S)``, with the mask ``llama`` builds and the kernel arguments ``args``."""
    rng = np.random.default_rng(seed)
    cfg = llama.config
    rows, length, heads = tokens.shape[0], tokens.shape[1], cfg.num_heads
    dim = cfg.hidden_size // heads
    q, k, v = (rng.standard_normal((rows, heads, length, dim)) for _ in range(3))
    kp, vp = (rng.standard_normal((rows, heads, prefix_len, dim)) for _ in range(2))
    mask = project_mask(llama, tokens, prefix_len)
    expected = prefix_attention(q, kp, vp, k, v, tokens == pad_token_id, args.scale_value)
    keys, values = np.concatenate([kp, k], 2), np.concatenate([vp, v], 2)
    return {corner: float(np.abs(flash_attention_score(q, keys, values, mask, args, corner) - expected).max())
            for corner in CORNERS}
