"""Per-candidate conditioning: the training layout (target | preference | soft), weighted per weight set.

Every candidate's context is built by :func:`research.pmg.models.conditioning.assemble_context`, the function
training uses, so generation sees the layout the soft preference was trained with: the target keyword group
(``n_text`` tokens), the preference keyword group (``n_text``) and, with a soft checkpoint, the L soft tokens.
The length is the same for every candidate and for the unconditional branch (static shapes). A group's
``n_text`` is whatever the encoder gives: one text-encoder window (``generate.long_prompts: cut``, longer texts
cut) or ``generate.max_chunks`` windows laid end to end (``chunk``, see
:func:`research.pmg.models.conditioning.chunk_token_ids`), for every group and the unconditional branch alike.

Two realisations of a weight set (w_p, w_t), selectable:

- ``scaling`` (weights act on embeddings, not on repeated words): each group's CLIP-text output is multiplied by
  its weight, and the soft embedding E_m by ``w_p * soft_weight`` (it is the implicit part of the preference).
- ``repetition`` (the official demo): each group's keyword text is repeated w times inside its own slot
  (", "-joined) before encoding; embeddings are not scaled, E_m gets ``soft_weight`` alone (tokens cannot be
  repeated at a fixed length). With ``long_prompts: cut`` repeats past the text encoder's window are cut
  off; with ``chunk`` they go into the next windows, as in the official demo (which repeats the preference
  keywords inside its one prompt and encodes a long prompt in windows of 77 tokens).

With (1, 1) both realisations give the same context. A ``None`` preference text leaves the preference group
out (the paper's "no personalization" and "embedding only" baselines); leaving a group out is not weight 0,
which would still take part in the attention softmax.

The unconditional branch: the negative prompt is encoded once and fills both keyword groups (with ``chunk``
its first window, the others empty, as the official code pads the negative prompt), and the soft group is
zeros. E_m has no text form, so "no user preference" is no soft content at all: zero vectors give
zero keys and values in SD's bias-free cross-attention, so guidance pushes along the full soft
contribution, and the result does not depend on the negative prompt's first L tokens.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import mindspore as ms

from research.pmg.models.conditioning import assemble_context

# texts -> CLIP-text hidden states (len(texts), n_text, ctx_dim) float32, e.g. models.conditioning.encode_texts
# (n_text: one window, or max_chunks windows with long_prompts: chunk)
Encoder = Callable[[list[str]], np.ndarray]


def repeated(text: str, times: float) -> str:
    """``text`` repeated ``times`` (a whole number) times, ", "-joined; 0 gives the empty prompt."""
    return ", ".join([text] * int(times)) if text else ""


def candidate_contexts(encode: Encoder, target_text: str, preference_text: str | None, soft: np.ndarray | None,
                       weight_sets: Sequence[Sequence[float]], weighting: str, soft_weight: float = 1.0) -> np.ndarray:
    """Contexts of the K weight sets ``(K, T, ctx_dim)`` float32.

    T = n_text (target) + n_text (preference, unless ``preference_text`` is None) + L (with ``soft (L, ctx_dim)``).
    ``weight_sets`` are (w_p, w_t) pairs; ``weighting`` is ``scaling`` or ``repetition``.
    """
    k = len(weight_sets)
    w_p = np.array([float(p) for p, _ in weight_sets], np.float32).reshape(k, 1, 1)
    w_t = np.array([float(t) for _, t in weight_sets], np.float32).reshape(k, 1, 1)
    with_preference = preference_text is not None
    if weighting == "scaling":
        encoded = encode([target_text] + ([preference_text] if with_preference else []))
        target = np.broadcast_to(encoded[0], (k,) + encoded.shape[1:])
        preference = np.broadcast_to(encoded[1], (k,) + encoded.shape[1:]) if with_preference else None
        weights = (w_t, w_p, w_p * soft_weight)
    elif weighting == "repetition":
        encoded = encode([repeated(target_text, t) for _, t in weight_sets] +
                         ([repeated(preference_text, p) for p, _ in weight_sets] if with_preference else []))
        target, preference = encoded[:k], (encoded[k:] if with_preference else None)
        weights = (1.0, 1.0, np.full((k, 1, 1), soft_weight, np.float32))
    else:
        raise ValueError(f"weighting must be 'scaling' or 'repetition', got {weighting!r}")
    soft_rows = None if soft is None else np.broadcast_to(soft, (k,) + soft.shape)
    return _assemble(target, preference, soft_rows, *weights)


def unconditional_context(encode: Encoder, negative_prompt: str, soft_len: int = 0,
                          preference: bool = True) -> np.ndarray:
    """The context of the guidance's unconditional branch ``(T, ctx_dim)``, laid out as the conditional one:
    the negative prompt in the target group and (with ``preference``) the preference group, zeros in the
    ``soft_len`` soft slots (none when 0)."""
    negative = encode([negative_prompt])
    soft = np.zeros((1, soft_len, negative.shape[-1]), np.float32) if soft_len else None
    return _assemble(negative, negative if preference else None, soft, 1.0, 1.0, 1.0)[0]


def _assemble(target, preference, soft, target_weight, preference_weight, soft_weight) -> np.ndarray:
    def tensor(x):
        return x if x is None or isinstance(x, float) else ms.Tensor(np.ascontiguousarray(x, np.float32))

    context = assemble_context(tensor(target), tensor(preference), tensor(soft), tensor(target_weight),
                               tensor(preference_weight), tensor(soft_weight))
    return context.asnumpy()
