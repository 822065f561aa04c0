"""The generation engine: prompts in, answers out, through MindFormers ``LlamaForCausalLM.generate``.

Shapes are static so that graph mode compiles once: every call is padded to ``keywords.batch_size`` rows
(missing rows repeat the first prompt, whose answer is then dropped) and every row to
``models.llm.seq_length`` tokens, right-padded with ``pad_token_id``; MindFormers reads each row's valid
length from the last non-pad token. With ``use_past`` the prompt is run once (prefill) and each new token
attends to the KV cache; without it every step re-runs the whole sequence. Greedy by default.

The model is built on the first call only, so a run whose answers are all cached never loads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from research.pmg.config import ConfigError, PMGConfig
from research.pmg.config.keywords import KeywordsConfig
from research.pmg.keywords.prompts import PromptError
from research.pmg.runtime import Runtime, seed_everything


class KeywordLLM:
    """The frozen LLM of the keyword stage, with its tokenizer and a count of the prompts it generated."""

    def __init__(self, cfg: PMGConfig, kcfg: KeywordsConfig, runtime: Runtime):
        from research.pmg.models import resolve_tokenizers
        from research.pmg.models.tokenizers import load_llama_tokenizer

        llm = cfg.models.llm
        if kcfg.max_new_tokens >= llm.seq_length:
            raise ConfigError(f"{cfg.source}: keywords.max_new_tokens ({kcfg.max_new_tokens}) must be smaller than "
                              f"models.llm.seq_length ({llm.seq_length})")
        self.cfg, self.kcfg, self.runtime = cfg, kcfg, runtime
        self.tokenizer_path = resolve_tokenizers(cfg, runtime).llm
        self.tokenizer = load_llama_tokenizer(self.tokenizer_path)
        self.seq_length, self.batch_size = llm.seq_length, kcfg.batch_size
        self.model_id = kcfg.model_id or derive_model_id(cfg, kcfg, runtime, self.tokenizer_path)
        self.prompts_generated = 0  # real LLM work: prompts (not padding rows) passed to generate
        self.batches_generated = 0
        self._model = None

    @property
    def budget(self) -> int:
        """Tokens a prompt may use: the context minus room for the answer."""
        return self.seq_length - self.kcfg.max_new_tokens

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text).input_ids)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Answers to ``prompts`` (any number), ``batch_size`` at a time, special tokens removed."""
        answers = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.encode(p) for p in prompts[start:start + self.batch_size]]
            for ids in self.generate_ids(chunk):
                answers.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return answers

    def generate_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """New token ids (EOS included when reached) for up to ``batch_size`` tokenised prompts.

        Input: ``len(prompts) <= batch_size`` lists of ids, each at most :attr:`budget` long. The model sees
        ``(batch_size, seq_length)`` int32 ids.
        """
        if not 0 < len(prompts) <= self.batch_size:
            raise ValueError(f"generate_ids takes 1 to {self.batch_size} prompts, got {len(prompts)}")
        pad = self.cfg.models.llm.pad_token_id
        ids = np.full((self.batch_size, self.seq_length), pad, dtype=np.int32)
        rows = list(prompts) + [prompts[0]] * (self.batch_size - len(prompts))
        for i, row in enumerate(rows):
            if not 0 < len(row) <= self.budget:
                raise PromptError(f"a prompt of {len(row)} tokens does not fit: at most {self.budget} "
                                  f"(models.llm.seq_length {self.seq_length} - keywords.max_new_tokens "
                                  f"{self.kcfg.max_new_tokens})")
            if row[-1] == pad:  # MindFormers finds a prompt's end as its last non-pad token
                raise PromptError(f"a prompt ends with the pad token id {pad}")
            ids[i, :len(row)] = row
        kcfg = self.kcfg
        sampling = dict(top_k=kcfg.top_k, top_p=kcfg.top_p, temperature=kcfg.temperature) if kcfg.do_sample else {}
        outputs = self.model.generate(ids, max_new_tokens=kcfg.max_new_tokens, do_sample=kcfg.do_sample,
                                      seed=self.cfg.runtime.seed if kcfg.do_sample else None, **sampling)
        self.prompts_generated += len(prompts)
        self.batches_generated += 1
        return [[int(t) for t in outputs[i][len(row):]] for i, row in enumerate(prompts)]

    @property
    def model(self):
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self):
        from research.pmg.models.llama import build_llama

        _quiet_mindformers_stdout()
        # Random-init weights (tiny models) depend on the RNG: re-seed so every run and rank builds the same ones.
        seed_everything(self.cfg.runtime.seed)
        model = build_llama(self.cfg.models.llm, self.runtime, batch_size=self.batch_size,
                            use_past=self.kcfg.use_past, kv_blocks=self.kcfg.kv_cache_blocks)
        if self.runtime.device == "CPU":
            from research.pmg.keywords.cpu_generation import enable_cpu_generation

            enable_cpu_generation(model)
        return model


def derive_model_id(cfg: PMGConfig, kcfg: KeywordsConfig, runtime: Runtime, tokenizer: Path) -> str:
    """``<checkpoint file name or random-init>:<digest>``: what decides the answers to a given prompt.

    The digest covers the architecture, the checkpoint's name and size (hashing many GB per run would cost
    more than it saves; set ``keywords.model_id`` to name a model explicitly), the random-init seed, the
    tokenizer file, the compute precision and the generation settings.
    """
    llm = cfg.models.llm
    checkpoint = Path(llm.checkpoint) if llm.checkpoint else None
    facts = {
        "architecture": {k: v for k, v in dataclasses.asdict(llm).items() if k not in ("checkpoint", "tokenizer")},
        "checkpoint": [checkpoint.name, checkpoint.stat().st_size] if checkpoint and checkpoint.is_file()
        else str(checkpoint) if checkpoint else None,
        "seed": None if checkpoint else cfg.runtime.seed,
        "tokenizer": hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest(),
        "precision": runtime.precision,
        "generation": {"max_new_tokens": kcfg.max_new_tokens, "do_sample": kcfg.do_sample,
                       **({"top_k": kcfg.top_k, "top_p": kcfg.top_p, "temperature": kcfg.temperature,
                           "batch_size": kcfg.batch_size} if kcfg.do_sample else {})},
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{checkpoint.name if checkpoint else 'random-init'}:{digest}"


def _quiet_mindformers_stdout() -> None:
    """MindFormers logs INFO lines to stdout on every generate call; keep warnings, drop the rest there."""
    from mindformers.tools.logger import get_logger

    for handler in get_logger().handlers:
        if getattr(handler, "stream", None) is sys.stdout:
            handler.setLevel(logging.WARNING)
