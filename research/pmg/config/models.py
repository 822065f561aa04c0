"""The ``models:`` section: the LLM, the soft-preference unit, Stable Diffusion and the CLIP scorer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from research.pmg.config.checks import check, check_range

@dataclass
class LlamaConfig:
    """Llama 2 architecture (MindFormers) plus where its weights and tokenizer are on disk.

    Defaults are Llama-2-7b-chat. ``checkpoint`` is a MindFormers ``.ckpt`` written by ``ckpt_convert``;
    empty means random initialisation (tiny test models only). ``tokenizer`` is a sentencepiece
    ``tokenizer.model``; empty means build a small one from the bundled corpus (tiny models only).
    """

    checkpoint: str = ""
    tokenizer: str = ""
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    n_kv_heads: int = 0  # 0 = num_heads (no grouped-query attention, as in Llama-2-7B)
    intermediate_size: int = 11008
    multiple_of: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    seq_length: int = 512  # static sequence length: every prompt is padded to it so graphs compile once
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def validate(self, where: str) -> None:
        # Upper bounds well above the largest Llama (405B: 16384 wide, 126 layers, 53248 MLP, 128k context)
        for name, high in (("vocab_size", 1 << 20), ("hidden_size", 1 << 16), ("num_layers", 1024),
                           ("num_heads", 1024), ("intermediate_size", 1 << 18), ("seq_length", 1 << 20)):
            check_range(getattr(self, name), 1, high, where, name)
        check(self.hidden_size % self.num_heads == 0, where, "hidden_size", "must be divisible by num_heads")
        check(0 <= self.n_kv_heads <= self.num_heads, where, "n_kv_heads", "must be in [0, num_heads] (0 = num_heads)")
        kv = self.n_kv_heads or self.num_heads
        check(self.num_heads % kv == 0, where, "n_kv_heads", "must divide num_heads")
        check_range(self.multiple_of, 1, 1 << 16, where, "multiple_of")
        check(0 < self.rms_norm_eps < 1, where, "rms_norm_eps", "must be in (0, 1)")
        check(self.rope_theta > 0, where, "rope_theta", "must be > 0")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            check(0 <= getattr(self, name) < self.vocab_size, where, name, "must be a token id below vocab_size")


@dataclass
class SoftPreferenceConfig:
    """The bias-correction part of PMG: P-Tuning v2 prefix (S per layer) and L multimodal tokens."""

    prefix_len: int = 4  # S, the paper's and the official code's value
    num_mm_tokens: int = 4  # L
    prefix_projection: bool = False  # reparameterise the prefix through an MLP (P-Tuning v2 option)
    projection_dim: int = 512
    dropout: float = 0.0
    # LLM sequence lengths (history prompt + the L tokens) below models.llm.seq_length that the bias-correction LLM
    # may run at: each training micro-batch and each generation prompt takes the smallest that holds its longest
    # prompt, instead of models.llm.seq_length. Each is a static graph of its own, compiled when first met; results
    # equal the unbucketed ones (prompts are right-padded). [] = always models.llm.seq_length.
    length_buckets: list[int] = field(default_factory=list)

    def validate(self, where: str) -> None:
        check_range(self.prefix_len, 1, 4096, where, "prefix_len")
        check_range(self.num_mm_tokens, 1, 4096, where, "num_mm_tokens")
        buckets = self.length_buckets
        check(all(a < b for a, b in zip(buckets, buckets[1:])), where, "length_buckets",
              f"must be strictly increasing, got {buckets}")
        check(all(b > self.num_mm_tokens for b in buckets), where, "length_buckets",
              f"each must be larger than num_mm_tokens ({self.num_mm_tokens}), got {buckets}")
        check(len(buckets) <= 16, where, "length_buckets", "at most 16 (each is a graph compiled on its own)")
        check_range(self.projection_dim, 1, 1 << 16, where, "projection_dim")
        check(0.0 <= self.dropout < 1.0, where, "dropout", "must be in [0, 1)")


@dataclass
class SchedulerConfig:
    """Noise schedule of the diffusion model (used when the diffusion path has no scheduler folder)."""

    name: Literal["ddpm", "ddim", "dpm_solver"] = "ddpm"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    def validate(self, where: str) -> None:
        check_range(self.num_train_timesteps, 1, 100_000, where, "num_train_timesteps")
        check(0 < self.beta_start < self.beta_end < 1, where, "beta_start", "need 0 < beta_start < beta_end < 1")


@dataclass
class DiffusionConfig:
    """Stable Diffusion parts (MindONE). Either a local diffusers folder or architectures for random init.

    ``path`` is a diffusers-format folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``) as written by ``ckpt_convert sd``. When empty, the models are built with random
    weights from the ``unet``, ``vae`` and ``text_encoder`` mappings, whose keys are the keyword
    arguments of the MindONE/transformers config classes (checked when the models are built).
    """

    path: str = ""
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    tokenizer_max_length: int = 77
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def validate(self, where: str) -> None:
        if not self.path:
            for name in ("unet", "vae", "text_encoder"):
                check(bool(getattr(self, name)), where, name, "needed when path is empty (random-init models)")
        check_range(self.tokenizer_max_length, 2, 1 << 16, where, "tokenizer_max_length")


@dataclass
class ClipConfig:
    """The CLIP scorer used to balance personalization and accuracy (the paper's balancing of preference and target).

    ``path`` is a Hugging Face ``CLIPModel`` folder; when empty, ``text_config``/``vision_config``
    build a random-init model (tiny tests only).
    """

    path: str = ""
    text_config: dict[str, Any] = field(default_factory=dict)
    vision_config: dict[str, Any] = field(default_factory=dict)
    projection_dim: int = 768

    def validate(self, where: str) -> None:
        if not self.path:
            check(bool(self.text_config), where, "text_config", "needed when path is empty")
            check(bool(self.vision_config), where, "vision_config", "needed when path is empty")
        check_range(self.projection_dim, 1, 1 << 16, where, "projection_dim")


@dataclass
class ModelsConfig:
    llm: LlamaConfig = field(default_factory=LlamaConfig)
    soft_preference: SoftPreferenceConfig = field(default_factory=SoftPreferenceConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
