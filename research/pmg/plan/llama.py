"""Llama 2 (MindFormers layout) in closed form: parameters, FLOPs, activations and KV cache.

Notation: ``h`` hidden size, ``L`` layers, ``a`` query heads, ``d = h / a`` head width, ``kv = n_kv_heads d``
(``= h`` without grouped-query attention), ``f`` intermediate size, ``V`` vocabulary, ``s`` tokens of a
sequence, ``t`` keys each query attends to (``s``, or ``s + S`` with a P-Tuning v2 prefix of ``S``), ``b``
sequences. ``tests/test_plan.py`` checks the parameters against transformers' ``LlamaForCausalLM``, the FLOPs
against ``torch.utils.flop_counter`` and the activations against the tensors PyTorch's autograd saves.

**Parameters** (MindFormers ``LlamaForCausalLM``, untied ``lm_head``, no biases): embedding ``V h``; per layer
``wq h^2 + wk, wv 2 h kv + wo h^2 + w1, w2, w3 3 h f + 2 h`` (two RMSNorm weights); final norm ``h``;
``lm_head V h``.

**FLOPs** (2 per multiply-add). Forward over ``s`` tokens: ``2 P_mm s`` for the matmul weights
``P_mm = L (2 h^2 + 2 h kv + 3 h f)`` plus attention ``4 s t h`` per layer (``Q K^T`` and ``P V``, ``2 s t h``
each, with the full ``s x t`` matrix: a causal mask saves no FLOPs in the fused kernels), plus ``2 V h`` per
position given to ``lm_head``. Backward to the inputs only, because the LLM is frozen and gradients only flow
to the trainable prefix and multimodal tokens: each matmul ``Y = X W`` needs ``dX = dY W^T``, the same
``2 s h_in h_out`` FLOPs as its forward, and no ``dW``; each attention product needs both operands'
gradients, twice its forward. So backward = ``2 P_mm s + 8 s t h L``, about one forward (not the two of full
training). One decoded token with a KV cache of ``c`` positions: ``2 P_mm + 2 V h + 4 c h L``.

**Activations of training** (bytes kept for the backward pass, per layer), counted the way Korthikanti et al.
2022 (*Reducing Activation Recomputation in Large Transformer Models*, section 4.1) count them: every op keeps
the inputs its backward reads, a linear layer's input included. Their GPT layer gives
``34 s b h + 5 a s^2 b`` bytes in 16-bit without sequence parallelism (11 s b h + 5 a s^2 b attention, 19 s b h
MLP with a ``4 h`` GeLU, 4 s b h LayerNorms, dropout masks included). The same count for a Llama layer (``B``
bytes per element, no dropout, SwiGLU, RMSNorm):

- RMSNorm inputs ``2 B s b h`` (a fused Ascend RMSNorm keeps its input; an unfused one also its normalised
  copy: ``4 B s b h``);
- inputs of wq/wk/wv, wo and w1/w3: ``3 B s b h``; of w2: ``B s b f``;
- Q ``B s b h``, K and V ``2 B t b kv`` (``2 B t b h`` without flash attention, which repeats grouped K and V
  to every query head before the products);
- SwiGLU: SiLU input, SiLU output and w3 output ``3 B s b f``;
- attention probabilities ``a s t b`` without flash attention, kept by the softmax in its dtype (fp32 in
  MindFormers: 4 bytes) and, cast to the compute dtype for ``P V``, once more (``B`` bytes) unless the two
  dtypes agree; flash attention keeps only its softmax statistics, ``2 x (b, a, s, 8)`` fp32 on Ascend.

For Llama-2-7B in bf16 (fused norms) without flash attention that is ``s b (16 h + 8 f) + 6 a s t b`` bytes,
about ``37.5 s b h + 6 a s^2 b``: close to the paper's GPT figure. It is an upper bound for PMG: the weights
are frozen, so the inputs kept only for weight gradients (those of the linear layers) could be dropped by the
compiler. Dropping them gives the floor (``frozen=True``: ``s b (12 h + 6 f)`` bytes with flash attention, a
quarter less for Llama-2-7B), which is what PyTorch's autograd keeps for a frozen model. With recompute each layer
keeps only its input ``B s b h`` and one layer at a time holds its full set again during its backward.
"""
from __future__ import annotations

import math

from research.pmg.config import LlamaConfig, SoftPreferenceConfig

KV_BLOCK_SIZE = 16  # tokens per block of MindFormers' paged KV cache


def head_dim(llm: LlamaConfig) -> int:
    return llm.hidden_size // llm.num_heads


def kv_dim(llm: LlamaConfig) -> int:
    return (llm.n_kv_heads or llm.num_heads) * head_dim(llm)


def llama_params(llm: LlamaConfig) -> dict[str, int]:
    """Parameters of ``LlamaForCausalLM`` by part: ``embedding``, ``layers``, ``final_norm``, ``lm_head``."""
    h, f = llm.hidden_size, llm.intermediate_size
    per_layer = 2 * h * h + 2 * h * kv_dim(llm) + 3 * h * f + 2 * h
    return {"embedding": llm.vocab_size * h, "layers": llm.num_layers * per_layer, "final_norm": h,
            "lm_head": llm.vocab_size * h}


def matmul_params(llm: LlamaConfig) -> int:
    """``P_mm``: the weights every token multiplies (the layers' projections; not the embedding lookup)."""
    h = llm.hidden_size
    return llm.num_layers * (2 * h * h + 2 * h * kv_dim(llm) + 3 * h * llm.intermediate_size)


def forward_flops(llm: LlamaConfig, tokens: int, keys: int | None = None, logits: int = 0) -> int:
    """One sequence of ``tokens`` through the layers, each query attending to ``keys`` positions (default
    ``tokens``), and ``lm_head`` on ``logits`` of the positions."""
    keys = tokens if keys is None else keys
    return (2 * matmul_params(llm) * tokens + 4 * tokens * keys * llm.hidden_size * llm.num_layers
            + 2 * llm.vocab_size * llm.hidden_size * logits)


def input_grad_flops(llm: LlamaConfig, tokens: int, keys: int | None = None) -> int:
    """Backward of :func:`forward_flops` (no ``lm_head``) to the inputs only, weights frozen."""
    keys = tokens if keys is None else keys
    return 2 * matmul_params(llm) * tokens + 8 * tokens * keys * llm.hidden_size * llm.num_layers


def decode_flops(llm: LlamaConfig, cache: int) -> int:
    """One new token with a KV cache of ``cache`` positions, logits included."""
    return forward_flops(llm, 1, cache, logits=1)


def layer_activation_bytes(llm: LlamaConfig, tokens: int, batch: int, keys: int | None = None, *, dtype_bytes: int,
                           flash: bool, fused_norm: bool = True, softmax_bytes: int = 4, frozen: bool = False) -> int:
    """Bytes one layer keeps for the backward pass (see the module docstring for each term).

    ``frozen``: the floor instead, what input gradients alone need: no linear layer's input (but the attention
    output, which flash attention's backward reads), and of an RMSNorm only its input.
    """
    keys = tokens if keys is None else keys
    h, f, kv, a = llm.hidden_size, llm.intermediate_size, kv_dim(llm), llm.num_heads
    sb, tb = tokens * batch, keys * batch
    if frozen:
        linear_inputs = sb * h if flash else 0
    else:
        linear_inputs = 3 * sb * h + sb * f  # inputs of wq/wk/wv, wo, w1/w3 and w2
    elems = (2 * (1 if fused_norm or frozen else 2) * sb * h  # RMSNorm inputs (+ normalised copies, unfused)
             + linear_inputs
             + sb * h + 2 * tb * (kv if flash else h)  # Q, K, V (repeated to every query head unless fused)
             + 3 * sb * f)  # SiLU input and output, w3 output
    if flash:
        scores = 2 * batch * a * tokens * 8 * 4
    else:
        scores = a * tokens * keys * batch * (softmax_bytes + (dtype_bytes if softmax_bytes != dtype_bytes else 0))
    return elems * dtype_bytes + scores


def activation_bytes(llm: LlamaConfig, tokens: int, batch: int, keys: int | None = None, *, dtype_bytes: int,
                     flash: bool, recompute: bool, fused_norm: bool = True, softmax_bytes: int = 4,
                     frozen: bool = False) -> int:
    """Bytes the LLM keeps for one backward pass: every layer's set, or with ``recompute`` every layer's input plus
    one layer's set; the final RMSNorm's input either way. ``frozen``: the floor (:func:`layer_activation_bytes`)."""
    layer = layer_activation_bytes(llm, tokens, batch, keys, dtype_bytes=dtype_bytes, flash=flash,
                                   fused_norm=fused_norm, softmax_bytes=softmax_bytes, frozen=frozen)
    sbh = tokens * batch * llm.hidden_size * dtype_bytes
    final_norm = (1 if fused_norm or frozen else 2) * sbh
    if recompute:
        return llm.num_layers * sbh + layer + final_norm
    return llm.num_layers * layer + final_norm


def kv_cache_blocks(llm: LlamaConfig, batch: int, configured: int = 0) -> int:
    """Blocks of the paged KV cache: ``configured`` (``keywords.kv_cache_blocks``) or, when 0, enough for every
    row of a batch at the full sequence length."""
    return configured or math.ceil(batch * llm.seq_length / KV_BLOCK_SIZE)


def kv_cache_bytes(llm: LlamaConfig, blocks: int, dtype_bytes: int) -> int:
    """``2 (K and V) x L x kv x bytes x blocks x 16`` tokens."""
    return 2 * llm.num_layers * kv_dim(llm) * dtype_bytes * blocks * KV_BLOCK_SIZE


def soft_preference_params(llm: LlamaConfig, soft: SoftPreferenceConfig, ctx_dim: int) -> dict[str, int]:
    """The trainable parameters: P-Tuning v2 prefix, L multimodal tokens, the map to the UNet's context width.

    Prefix: MindFormers' ``Ptuning2Encoder`` embeds ``S`` positions into ``E = L x 2 x kv`` values (a key and a
    value per layer); with ``prefix_projection`` they pass through ``E -> projection_dim -> E`` (two Dense layers
    with biases). Tokens: ``(L_mm, h)``. Map: ``Dense(h, ctx_dim)`` with a bias.
    """
    e = llm.num_layers * 2 * kv_dim(llm)
    prefix = soft.prefix_len * e
    if soft.prefix_projection:
        p = soft.projection_dim
        prefix += e * p + p + p * e + e
    return {"prefix": prefix, "mm_tokens": soft.num_mm_tokens * llm.hidden_size,
            "map": llm.hidden_size * ctx_dim + ctx_dim}
