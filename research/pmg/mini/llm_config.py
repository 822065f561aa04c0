"""Settings of the mini-LLM trainer (``configs/mini/llm.yaml``): world, tokenizer, model, prompts, optimisation.

The YAML file maps onto :class:`MiniLLMConfig` with the project's checked loader (unknown keys and bad values
stop the run naming the file and the field). ``llm`` is the project's :class:`~research.pmg.config.LlamaConfig`
and ``keywords`` its :class:`~research.pmg.config.keywords.KeywordsConfig`: the same sections a PMG config has,
so the trained model drops into one (``models.llm`` and ``keywords``) with the prompt settings it was trained on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from research.pmg.config import (SEED_LIMIT, ConfigError, LlamaConfig, RuntimeConfig, check_range,
                                 load_dataclass_config)
from research.pmg.config.keywords import KeywordsConfig
from research.pmg.errors import short_repr

KIND_NAMES = ("preference", "target", "integrate")


@dataclass
class WorldConfig:
    """The simulated sticker world (research.pmg.data.sticker_set): training users and held-out users."""

    users: int = 300
    events: int = 20  # sticker uses per user
    seed: int = 0
    eval_users: int = 12  # held-out users, another seed: the acceptance measure
    eval_events: int = 10
    eval_seed: int = 1
    eval_samples: int = 24  # held-out samples run through the keyword stage at the end (0 = skip)
    integrate_pairs: int = 600  # integrate prompts rendered for training

    def validate(self, where: str) -> None:
        for name in ("users", "eval_users"):
            check_range(getattr(self, name), 1, 1_000_000, where, name)
        for name in ("events", "eval_events"):
            check(getattr(self, name) >= 7, where, name, "must be >= 7 (a 5-item history needs earlier uses)")
            check_range(getattr(self, name), 7, 100_000, where, name)
        for name in ("seed", "eval_seed"):
            check(0 <= getattr(self, name) < SEED_LIMIT, where, name, "must be in [0, 2**32)")
        check(self.seed != self.eval_seed, where, "eval_seed", "must differ from seed (held-out users)")
        check_range(self.eval_samples, 0, 1_000_000, where, "eval_samples")
        check_range(self.integrate_pairs, 0, 1_000_000, where, "integrate_pairs")


@dataclass
class TokenizerConfig:
    """The sentencepiece BPE model trained on the rendered prompts and answers (Llama 2's settings otherwise).

    ``template_symbols``: every literal sentence of the prompt templates and the chat format (between the
    placeholders) is one piece, so the fixed text of a prompt costs a dozen tokens; item text stays word-level
    (``split_by_whitespace``), so the model reads the words of a caption and can copy them. Its size is
    ``llm.vocab_size``.
    """

    template_symbols: bool = True
    split_by_whitespace: bool = True
    split_digits: bool = False  # Llama 2 splits digits; here "\n2." is one piece, shortening list answers
    max_piece_length: int = 16

    def validate(self, where: str) -> None:
        check(2 <= self.max_piece_length <= 512, where, "max_piece_length", "must be in [2, 512]")


@dataclass
class MiniTrainConfig:
    """Optimisation: AdamW on every LLM weight, causal-LM loss on the answer tokens only."""

    batch_size: int = 32
    lr: float = 3.0e-3
    weight_decay: float = 0.01
    max_steps: int = 600
    warmup_steps: int = 30  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global norm; 0 disables clipping
    # Output layer tied to the input embedding while training (a copying prior: reading a word raises its
    # logit). Exported as two equal matrices, so the keyword stage's (untied) Llama loads it unchanged.
    tie_word_embeddings: bool = False
    mix: dict[str, float] = field(default_factory=lambda: {"preference": 0.6, "target": 0.3, "integrate": 0.1})
    # Curriculum: the first ``early_steps`` steps draw kinds by ``early_mix`` instead of ``mix`` (e.g. mostly
    # single-sticker target prompts, whose answers copy caption words, before the history prompts).
    early_mix: dict[str, float] = field(default_factory=dict)
    early_steps: int = 0
    eval_every: int = 100  # steps between held-out losses; 0 = only at the end
    eval_batches: int = 2
    save_every: int = 100  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2
    log_every: int = 10

    def validate(self, where: str) -> None:
        check_range(self.batch_size, 1, 1 << 16, where, "batch_size")
        check(self.lr > 0, where, "lr", "must be > 0")
        check(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        check_range(self.max_steps, 1, 10 ** 9, where, "max_steps")
        check(0 <= self.warmup_steps <= self.max_steps, where, "warmup_steps", "must be in [0, max_steps]")
        check(0 <= self.min_lr_ratio <= 1, where, "min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, where, "grad_clip", "must be >= 0")
        _check_mix(self.mix, where, "mix")
        check(0 <= self.early_steps <= self.max_steps, where, "early_steps", "must be in [0, max_steps]")
        if self.early_steps:
            _check_mix(self.early_mix, where, "early_mix")
        for name in ("eval_every", "save_every", "log_every"):
            check_range(getattr(self, name), 0, 10 ** 9, where, name)
        check_range(self.eval_batches, 0, 1 << 20, where, "eval_batches")
        check_range(self.keep_last, 1, 10_000, where, "keep_last")


@dataclass
class MiniLLMConfig:
    """The whole mini-LLM run. ``export_dir`` receives the weights, the tokenizer and manifest.json."""

    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(device="CPU", precision="fp32",
                                                                        output_dir="output/mini/llm"))
    llm: LlamaConfig = field(default_factory=LlamaConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    keywords: KeywordsConfig = field(default_factory=KeywordsConfig)
    train: MiniTrainConfig = field(default_factory=MiniTrainConfig)
    export_dir: str = "research/pmg/assets/mini/llm"
    source: str = field(default="<defaults>", metadata={"internal": True})

    def validate(self, where: str) -> None:
        check(not self.llm.checkpoint and not self.llm.tokenizer, where, "llm.checkpoint",
               "the trainer makes the checkpoint and the tokenizer: leave llm.checkpoint and llm.tokenizer empty")
        check(self.keywords.max_new_tokens < self.llm.seq_length, where, "keywords.max_new_tokens",
               f"must be smaller than llm.seq_length ({self.llm.seq_length})")
        check(self.llm.pad_token_id == 0 and self.llm.bos_token_id == 1 and self.llm.eos_token_id == 2, where,
               "llm.pad_token_id", "the trained tokenizer has <unk>=0 (the pad), <s>=1, </s>=2")
        check(bool(self.export_dir), where, "export_dir", "must not be empty")

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def load_mini_llm_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> MiniLLMConfig:
    """Load ``configs/mini/llm.yaml`` (``base:`` and ``--set key=value`` work as for PMG configs), validated."""
    return load_dataclass_config(MiniLLMConfig, path, overrides)


def _check_mix(mix: dict[str, float], where: str, name: str) -> None:
    unknown = sorted(set(mix) - set(KIND_NAMES))
    check(not unknown, where, name, f"unknown kind {short_repr(unknown[:1])} (kinds: {', '.join(KIND_NAMES)})")
    check(all(v >= 0 for v in mix.values()) and sum(mix.values()) > 0, where, name,
           "weights must be >= 0 with a positive sum")


def check(ok: bool, where: str, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}{name}: {message}")
