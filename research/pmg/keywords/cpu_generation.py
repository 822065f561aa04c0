"""MindFormers ``LlamaForCausalLM.generate`` on CPU: the three Ascend-only kernels it needs, in plain ops.

Measured with MindSpore 2.7.2 / MindFormers 1.8.0 on CPU:

- greedy search calls ``mint.argmax`` (ArgMaxExt), which has no CPU kernel: every ``generate`` fails;
- ``use_past=True`` (incremental inference with a KV cache) runs MindFormers' ``InferAttention``, whose
  rotary embedding is ``ApplyRotaryPosEmb`` (fp16/bf16 only, no CPU kernel) and whose KV cache is paged:
  ``ReshapeAndCache`` writes it and ``PagedAttention`` reads it, both Ascend-only.

:func:`enable_cpu_generation` swaps these for equivalents built from ops that have CPU kernels, on one model
instance, keeping MindFormers' own generate loop, block tables, masks and RoPE tables. The cache keeps the
paged layout's addressing (slot = block * block_size + offset, blocks from the block tables), stored as a
flat ``(num_blocks * block_size + 1, n_kv_heads * head_dim)`` table whose extra last row absorbs the writes
of padding positions (slot -1). Verified: greedy tokens with the KV cache equal those without it, and a
batch equals its rows run one by one (tests/test_keywords.py). Never applied on Ascend.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


class RotaryEmbeddingCPU(nn.Cell):
    """``InferRotaryEmbedding`` (ApplyRotaryPosEmb) as rotate-half RoPE, the formula of MindFormers' training path.

    ``query``/``key`` are ``(batch, seq, heads * head_dim)``; ``freqs_cis`` holds cos/sin tables of shape
    ``(batch * seq, head_dim)`` (prefill) or ``(batch, head_dim)`` (one new token per row).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim, self.half = head_dim, head_dim // 2

    def construct(self, query, key, freqs_cis, batch_valid_length):
        cos, sin, _ = freqs_cis
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    def _rotate(self, x, cos, sin):
        batch, seq, width = x.shape
        x = x.reshape(batch, seq, width // self.head_dim, self.head_dim)
        cos = cos.reshape(batch, seq, 1, self.head_dim).astype(x.dtype)
        sin = sin.reshape(batch, seq, 1, self.head_dim).astype(x.dtype)
        rotated = ops.concat((ops.neg(x[:, :, :, self.half:]), x[:, :, :, :self.half]), -1)
        return (x * cos + rotated * sin).reshape(batch, seq, width)


class PagedKVCacheCPU(nn.Cell):
    """``PagedAttentionMgr`` (ReshapeAndCache + PagedAttention) with gather/scatter and a masked softmax.

    Same interface: ``construct(key, value, slot_mapping, batch_valid_length)`` stores the keys/values of the
    current tokens, ``paged_attn(query, batch_valid_length, block_tables)`` attends one new query token per row
    over the first ``batch_valid_length`` cached positions of its blocks.
    """

    def __init__(self, mgr: nn.Cell):
        super().__init__()
        num_blocks, block_size = mgr.key_cache.shape[0], mgr.key_cache.shape[1]
        self.n_heads, self.n_kv_heads, self.head_dim = mgr.n_heads, mgr.n_kv_heads, mgr.head_dim
        self.block_size = block_size
        self.sink = num_blocks * block_size  # the row that absorbs writes for slot -1 (padding)
        shape = (self.sink + 1, self.n_kv_heads * self.head_dim)
        dtype = mgr.key_cache.dtype
        self.key_cache = Parameter(Tensor(np.zeros(shape), dtype), name="key_cache", requires_grad=False)
        self.value_cache = Parameter(Tensor(np.zeros(shape), dtype), name="value_cache", requires_grad=False)
        self.offsets = Tensor(np.arange(block_size, dtype=np.int32))
        self.scale = float(mgr.scale_value)
        self.is_first_iteration = True
        self.batch_matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.batch_matmul = ops.BatchMatMul()

    def construct(self, key, value, slot_mapping, batch_valid_length=None):
        slots = ops.select(slot_mapping < 0, ops.full_like(slot_mapping, self.sink), slot_mapping)
        width = self.n_kv_heads * self.head_dim
        stored_key = ops.scatter_update(self.key_cache, slots, key.reshape(-1, width))
        stored_value = ops.scatter_update(self.value_cache, slots, value.reshape(-1, width))
        return ops.depend(stored_key, stored_value)

    def paged_attn(self, query, batch_valid_length, block_tables, attn_mask=None, q_seq_lens=None):
        batch, max_blocks = block_tables.shape
        length = max_blocks * self.block_size
        rows = (ops.maximum(block_tables, 0).expand_dims(-1) * self.block_size + self.offsets).reshape(-1)
        key = self._heads(ops.gather(self.key_cache, rows, 0), batch, length)
        value = self._heads(ops.gather(self.value_cache, rows, 0), batch, length)
        query = query.reshape(batch, 1, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        score = self.batch_matmul_qk(query, key) * self.scale  # (batch, heads, 1, length)
        positions = ops.arange(length, dtype=ms.int32).reshape(1, 1, 1, length)
        valid = (positions < batch_valid_length.reshape(batch, 1, 1, 1)).astype(score.dtype)
        score = score + (1.0 - valid) * -10000.0  # the additive mask value of MindFormers' own attention
        probs = ops.softmax(score.astype(ms.float32), -1).astype(value.dtype)
        out = self.batch_matmul(probs, value)  # (batch, heads, 1, head_dim)
        return out.transpose(0, 2, 1, 3).reshape(batch, 1, self.n_heads * self.head_dim)

    def _heads(self, rows, batch, length):
        """(batch * length, kv_heads * head_dim) -> (batch, heads, length, head_dim), kv heads repeated for GQA."""
        x = rows.reshape(batch, length, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        repeat = self.n_heads // self.n_kv_heads
        if repeat > 1:  # as MindFormers' _repeat_kv: each kv head serves `repeat` consecutive query heads
            x = ops.tile(x.reshape(batch, self.n_kv_heads, 1, length * self.head_dim), (1, 1, repeat, 1))
            x = x.reshape(batch, self.n_heads, length, self.head_dim)
        return x


def _argmax(logits, axis):
    return ops.Argmax(axis=axis, output_type=ms.int32)(logits)


def enable_cpu_generation(model: nn.Cell) -> nn.Cell:
    """Make ``model.generate`` run on CPU (greedy and sampling, with or without ``use_past``); returns it."""
    model.argmax = _argmax
    if getattr(model.config, "use_past", False):
        for layer in model.model.layers:
            attention = layer.attention.infer_attention
            attention.rotary_embedding = RotaryEmbeddingCPU(attention.head_dim)
            attention.paged_attention_mgr = PagedKVCacheCPU(attention.paged_attention_mgr)
    return model
