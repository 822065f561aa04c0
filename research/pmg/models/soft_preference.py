"""The bias-correction LLM of PMG (paper section 3.2): the soft preference embedding.

A frozen Llama reads the user's history prompt followed by L trainable multimodal tokens; P-Tuning v2
adds S trainable key/value vectors to every attention layer. The hidden states at the L token positions
are mapped by a trainable linear layer into the diffusion UNet's cross-attention width. Only the prefix,
the tokens and the map learn; gradients reach them through the frozen LLM.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from research.pmg.config import LlamaConfig, SoftPreferenceConfig
from research.pmg.models.llama import build_prefix_encoder, fit_flash_attention_to_prefix


class SoftPreferenceEncoder(nn.Cell):
    """History prompt ids ``(batch, prompt_len)`` -> soft preference embedding ``(batch, L, ctx_dim)``.

    ``prompt_len = llm.seq_length - L``. Prompts are left-padded with ``pad_token_id`` so the L tokens
    always directly follow the text (pad positions are masked as keys by MindFormers). Trainable
    parameters are fp32 on every device; the frozen LLM computes in its own dtype.
    """

    def __init__(self, llama: nn.Cell, llm: LlamaConfig, soft: SoftPreferenceConfig, ctx_dim: int,
                 compute_dtype=ms.float32):
        super().__init__()
        fit_flash_attention_to_prefix(llama, soft.prefix_len)
        self.llama = llama
        self.num_mm_tokens = soft.num_mm_tokens
        self.hidden_size = llm.hidden_size
        self.compute_dtype = compute_dtype
        self.prefix_encoder = build_prefix_encoder(llm, soft)
        # Same scale as the LLM's own embeddings at init (MindFormers' init_method_std), so the tokens start
        # as plausible inputs rather than outliers.
        init = np.random.default_rng(0).normal(0.0, 0.01, (soft.num_mm_tokens, llm.hidden_size)).astype(np.float32)
        self.mm_tokens = ms.Parameter(ms.Tensor(init), name="mm_tokens")
        self.to_context = nn.Dense(llm.hidden_size, ctx_dim)
        self.pad_token_id = llm.pad_token_id

    def construct(self, prompt_ids):
        batch = prompt_ids.shape[0]
        embeds = self.llama.model.tok_embeddings(prompt_ids).astype(self.compute_dtype)
        mm = ops.broadcast_to(self.mm_tokens.astype(self.compute_dtype)[None], (batch, self.num_mm_tokens,
                                                                                 self.hidden_size))
        inputs = ops.concat((embeds, mm), axis=1)
        # ids only drive the key-padding mask: the L token positions must not look like padding.
        mm_ids = ops.fill(prompt_ids.dtype, (batch, self.num_mm_tokens), self.pad_token_id + 1)
        ids = ops.concat((prompt_ids, mm_ids), axis=1)
        prefix_kv = self.prefix_encoder(batch, self.compute_dtype)
        hidden = self.llama.model(ids, inputs, None, None, None, None, None, prefix_kv)
        return self.to_context(hidden[:, -self.num_mm_tokens:, :].astype(ms.float32))

    def trainable_names(self) -> list[str]:
        """Names (relative to this cell) of the parameters PMG trains."""
        return [name for name, param in self.parameters_and_names() if param.requires_grad]
