"""The whole configuration: one section per stage plus runtime and models, checked across sections."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from research.pmg.config.checks import check
from research.pmg.config.data import DataConfig
from research.pmg.config.evaluate import EvaluateConfig
from research.pmg.config.generate import GenerateConfig
from research.pmg.config.keywords import KeywordsConfig
from research.pmg.config.models import ModelsConfig
from research.pmg.config.runtime import RuntimeConfig
from research.pmg.config.train import TrainConfig
from research.pmg.scenarios import NAMES

@dataclass
class PMGConfig:
    """The whole configuration. ``source`` records the file it came from, for error messages."""

    scenario: Literal[NAMES] = "stickers"  # a name of research.pmg.scenarios
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    keywords: KeywordsConfig = field(default_factory=KeywordsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})

    def validate(self) -> None:
        """Check cross-section rules; per-section rules run in :func:`_build`."""
        where = f"{self.source}: "
        llm, soft = self.models.llm, self.models.soft_preference
        check(soft.num_mm_tokens < llm.seq_length, where, "models.soft_preference.num_mm_tokens",
               f"must be smaller than models.llm.seq_length ({llm.seq_length})")
        check(self.keywords.max_new_tokens < llm.seq_length, where, "keywords.max_new_tokens",
               f"must be smaller than models.llm.seq_length ({llm.seq_length})")
        check(all(b < llm.seq_length for b in soft.length_buckets), where, "models.soft_preference.length_buckets",
               f"each must be smaller than models.llm.seq_length ({llm.seq_length}), got {soft.length_buckets}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out
