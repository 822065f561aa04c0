"""The bias-correction LLM of PMG (paper section 3.2): the soft preference embedding, built, saved and loaded here.

A frozen Llama reads the user's history prompt followed by L trainable multimodal tokens; P-Tuning v2
adds S trainable key/value vectors to every attention layer. The hidden states at the L token positions
are mapped by a trainable linear layer into the diffusion UNet's cross-attention width. Only the prefix,
the tokens and the map learn; gradients reach them through the frozen LLM.

Training builds the encoder with :func:`build_encoder` and saves its trainable parameters as ``SOFT_FILE`` in
each checkpoint (train/checkpoint.py); generation finds that file with :func:`resolve_soft_checkpoint` and
gets a ready history-prompt -> E_m callable from :func:`build_soft_preference`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from research.pmg.checkpoints import list_checkpoints
from research.pmg.config import LlamaConfig, PMGConfig, SoftPreferenceConfig
from research.pmg.errors import PMGError
from research.pmg.examples import tokenize_prompts
from research.pmg.models.llama import accept_shorter_inputs, build_prefix_encoder, fit_flash_attention_to_prefix
from research.pmg.models.weights import load_checkpoint_into
from research.pmg.runtime import Runtime

SOFT_FILE = "soft_preference.ckpt"  # the trainable parameters alone, in every training checkpoint folder


def prompt_len(cfg: PMGConfig) -> int:
    """Tokens of the history prompt: the LLM's static sequence length less the L multimodal tokens."""
    return cfg.models.llm.seq_length - cfg.models.soft_preference.num_mm_tokens


def prompt_widths(cfg: PMGConfig) -> tuple[int, ...]:
    """The prompt widths the encoder runs at, ascending: each length bucket less the L tokens, then prompt_len."""
    soft = cfg.models.soft_preference
    return tuple(bucket - soft.num_mm_tokens for bucket in soft.length_buckets) + (prompt_len(cfg),)


def fit_to_bucket(prompt_ids: np.ndarray, widths: tuple[int, ...], pad_id: int) -> np.ndarray:
    """Right-padded ids ``(n, prompt_len)`` -> ``(n, w)``: the smallest width ``w`` of ``widths`` that keeps every
    row's text (up to its last non-pad id). Only pads are cut, so the soft embedding does not change."""
    used = int(((prompt_ids != pad_id) * np.arange(1, prompt_ids.shape[1] + 1)).max(initial=0))
    width = next(w for w in widths if w >= used)
    return prompt_ids[:, :width]


class SoftPreferenceEncoder(nn.Cell):
    """History prompt ids ``(batch, width)`` -> soft preference embedding ``(batch, L, ctx_dim)``.

    ``width`` is at most ``prompt_len = llm.seq_length - L`` (a shorter width is a length bucket: its own graph).
    Prompts are right-padded with ``pad_token_id``: each row's L tokens are placed directly after its own text,
    so a row's text and tokens sit at positions 0 .. n + L - 1 whatever the padding, and causal attention keeps
    every pad after them out of their view. The embedding is then the same at any width. (Left padding would
    shift the positions by the amount of padding: RoPE keeps text-to-text scores position-free, but the
    P-Tuning v2 prefix keys carry no position, so query-to-prefix scores would change with the width.)
    Trainable parameters are fp32 on every device; the frozen LLM computes in its own dtype.
    """

    def __init__(self, llama: nn.Cell, llm: LlamaConfig, soft: SoftPreferenceConfig, ctx_dim: int,
                 compute_dtype=ms.float32):
        super().__init__()
        fit_flash_attention_to_prefix(llama, soft.prefix_len)
        accept_shorter_inputs(llama)
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
        batch, width = prompt_ids.shape
        L = self.num_mm_tokens
        seq = width + L
        # n_b = one past the last non-pad id (a pad id inside the text, e.g. Llama's <unk> = 0, stays text)
        positions = ops.arange(1, width + 1, dtype=ms.int32)[None, :]
        lengths = ((prompt_ids != self.pad_token_id).astype(ms.int32) * positions).max(axis=1, keepdims=True)
        # slot[b, j] = j - n_b: the multimodal token at position j, when 0 <= slot < L.
        slot = ops.arange(seq, dtype=ms.int32)[None, :] - lengths  # (b, seq)
        # One-hot placement (b, seq, L): exact (each position takes one token times 1.0) and a plain matmul in
        # both passes, on every backend.
        place = ops.equal(slot[:, :, None], ops.arange(L, dtype=ms.int32)[None, None, :]).astype(self.compute_dtype)
        is_mm = place.sum(axis=2, keepdims=True)  # (b, seq, 1): 1 at the L token positions
        ids = ops.concat((prompt_ids, ops.fill(prompt_ids.dtype, (batch, L), self.pad_token_id)), axis=1)
        embeds = self.llama.model.tok_embeddings(ids).astype(self.compute_dtype)
        mm = ops.matmul(place, self.mm_tokens.astype(self.compute_dtype))  # (b, seq, H)
        inputs = embeds * (1 - is_mm) + mm
        # ids only drive the key-padding mask: the L token positions must not look like padding.
        ids = ops.select(is_mm[:, :, 0] > 0, ops.full_like(ids, self.pad_token_id + 1), ids)
        prefix_kv = self.prefix_encoder(batch, self.compute_dtype)
        hidden = self.llama.model(ids, inputs, None, None, None, None, None, prefix_kv)  # (b, seq, H)
        # The hidden states at each row's L token positions, in token order: (b, L, seq) @ (b, seq, H).
        picked = ops.bmm(place.swapaxes(1, 2).astype(ms.float32), hidden.astype(ms.float32))
        return self.to_context(picked)

    def trainable_names(self) -> list[str]:
        """Names (relative to this cell) of the parameters PMG trains."""
        return [name for name, param in self.parameters_and_names() if param.requires_grad]


def build_encoder(cfg: PMGConfig, runtime: Runtime, ctx_dim: int, *, batch_size: int,
                  recompute: bool = False) -> SoftPreferenceEncoder:
    """The frozen LLM (compiled for ``batch_size`` rows) wrapped with fresh trainable prefix, tokens and map."""
    from research.pmg.models.factory import build_llm

    llama = build_llm(cfg, runtime, batch_size=batch_size, recompute=recompute)
    return SoftPreferenceEncoder(llama, cfg.models.llm, cfg.models.soft_preference, ctx_dim, runtime.compute_dtype)


@dataclass
class SoftPreference:
    """The trained bias-correction LLM: a history prompt -> E_m ``(L, ctx_dim)`` float32."""

    encoder: Any  # research.pmg.models.soft_preference.SoftPreferenceEncoder, trained parameters loaded
    tokenizer: Any  # the LLM's tokenizer
    prompt_len: int
    pad_id: int
    widths: tuple[int, ...] = ()  # length buckets (prompt_widths); () = always prompt_len

    @property
    def num_tokens(self) -> int:
        return int(self.encoder.num_mm_tokens)

    def __call__(self, history_prompt: str) -> np.ndarray:
        ids = tokenize_prompts(self.tokenizer, [history_prompt], self.prompt_len, self.pad_id)
        ids = fit_to_bucket(ids, self.widths or (self.prompt_len,), self.pad_id)
        return self.encoder(ms.Tensor(ids)).asnumpy()[0].astype(np.float32)


def resolve_soft_checkpoint(path: str | Path) -> Path:
    """``soft_preference.ckpt`` from a file, a ``step-*`` folder, or a training output / checkpoints folder
    (then the newest complete checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / SOFT_FILE).is_file():
        return path / SOFT_FILE
    for folder in (path / "checkpoints", path):
        found = list_checkpoints(folder)
        if found and (found[-1] / SOFT_FILE).is_file():
            return found[-1] / SOFT_FILE
    raise PMGError(f"generate.soft_checkpoint: {path}: no {SOFT_FILE} there (give the file, a step-* folder or "
                   "the training output folder)")


def load_soft_checkpoint(encoder, checkpoint: Path) -> None:
    """Load trained soft-preference parameters into ``encoder``: every trainable one must be in the file.

    Training saves only the trainable parameters (train/checkpoint.py), so the frozen ones (the LLM, the
    prefix encoder's fixed position ids) may be absent; anything unexpected or mis-shaped is an error.
    """
    frozen = tuple(name for name, param in encoder.parameters_and_names() if not param.requires_grad)
    load_checkpoint_into(encoder, checkpoint, what="generate.soft_checkpoint", allow_missing=frozen)


def build_soft_preference(cfg: PMGConfig, runtime: Runtime, tokenizers, ctx_dim: int,
                          checkpoint: Path) -> SoftPreference:
    """The frozen LLM with the trained prefix, tokens and map loaded strictly (see :func:`load_soft_checkpoint`)."""
    from research.pmg.models.tokenizers import load_llama_tokenizer

    llm = cfg.models.llm
    encoder = build_encoder(cfg, runtime, ctx_dim, batch_size=1)
    load_soft_checkpoint(encoder, checkpoint)
    encoder.set_train(False)
    return SoftPreference(encoder=encoder, tokenizer=load_llama_tokenizer(tokenizers.llm),
                          prompt_len=prompt_len(cfg), pad_id=llm.pad_token_id, widths=prompt_widths(cfg))
