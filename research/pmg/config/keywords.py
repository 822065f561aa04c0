"""Settings of the keyword-extraction stage: prompts, generation, keyword caps, cache and output paths.

The ``keywords:`` section of :class:`research.pmg.config.PMGConfig`. The model itself is
``models.llm`` and the scenario is the top-level ``scenario`` field, so neither is repeated here. Defaults
live here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from research.pmg.config.checks import check, check_finite
from research.pmg.errors import short_repr

SPLITS = ("train", "valid", "test")
CHAT_FORMAT_NAMES = ("llama2", "human_assistant", "chatml", "plain")


@dataclass
class KeywordsConfig:
    """How preference keywords k_p and target keywords k_t are extracted with the frozen LLM.

    Empty paths have defaults (research/pmg/layout.py): ``data`` is the prepared dataset of the data stage
    (``data.out`` or ``<runtime.output_dir>/data``), ``out`` is ``<runtime.output_dir>/keywords/keywords.jsonl``
    and ``cache`` is ``<runtime.output_dir>/keywords/cache``.
    """

    templates: str = ""  # prompt set: a name under configs/prompts/ or a YAML path; "" = the scenario's set
    chat_format: Literal["llama2", "human_assistant", "chatml", "plain"] = "llama2"  # llama2 = Llama-2-chat [INST]
    num_preference: int = 8  # N for k_p (the official code's 8)
    num_target: int = 10  # N for k_t
    per_attribute: int = 5  # keywords asked for per attribute ("at most N" in the prompt)
    integrate: bool = False  # let the LLM pick the N most distinctive keywords of the merged list
    max_new_tokens: int = 64
    batch_size: int = 8  # prompts per generate call; the batch is padded to this size (static shapes)
    use_past: bool = True  # incremental inference with a KV cache
    # Blocks of 16 tokens in the paged KV cache; 0 = enough for every row of a batch at the full sequence
    # length (batch_size x seq_length / 16). MindFormers' own default, 512 blocks, fails above 8 x 1024 tokens.
    kv_cache_blocks: int = 0
    do_sample: bool = False  # greedy by default; sampling makes answers depend on the batch they ran in
    top_k: int = 0  # sampling only; 0 = off
    top_p: float = 1.0  # sampling only
    temperature: float = 1.0  # sampling only
    max_item_chars: int = 200  # longer titles and conversation turns are cut (with an ellipsis)
    max_keyword_words: int = 4  # longer parsed pieces are sentences, not keywords
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    max_samples: int = 0  # the first N selected samples in dataset order; 0 = all
    data: str = ""
    out: str = ""
    cache: str = ""
    model_id: str = ""  # cache identity of the LLM; "" = derived from models.llm, precision and generation settings

    def validate(self, where: str) -> None:
        check_finite(self, where)  # values set in code bypass the loader's check
        # Upper bounds: each of these sizes an array, a prompt or a batch
        for name, high in (("num_preference", 1000), ("num_target", 1000), ("per_attribute", 1000),
                           ("max_new_tokens", 1 << 20), ("batch_size", 4096), ("max_item_chars", 1 << 20),
                           ("max_keyword_words", 1000)):
            check(getattr(self, name) > 0, where, name, "must be > 0")
            check(getattr(self, name) <= high, where, name, f"must be <= {high}")
        check(self.max_item_chars >= 8, where, "max_item_chars", "must be >= 8")
        check(0 <= self.top_k <= 1 << 20, where, "top_k", "must be in [0, 1048576] (0 = off)")
        check(0.0 < self.top_p <= 1.0, where, "top_p", "must be in (0, 1]")
        check(self.temperature > 0, where, "temperature", "must be > 0")
        check(bool(self.splits), where, "splits", f"must name at least one of {list(SPLITS)}")
        for split in self.splits:
            check(split in SPLITS, where, "splits", f"{short_repr(split)} is not one of {list(SPLITS)}")
        check(len(set(self.splits)) == len(self.splits), where, "splits", "names a split twice")
        check(self.max_samples >= 0, where, "max_samples", "must be >= 0 (0 = all)")
        check(0 <= self.kv_cache_blocks <= 1 << 24, where, "kv_cache_blocks",
               "must be in [0, 16777216] (0 = sized from the batch)")

