"""Settings of the generation stage: weight sets, sampling, CLIP balancing, batching, soft preference, paths.

The ``generate:`` section of :class:`research.pmg.config.PMGConfig`. The models are
``models.diffusion`` and ``models.clip``, the seed is ``runtime.seed``; neither is repeated here. Defaults live
here and nowhere else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from research.pmg.config.checks import check, check_finite
from research.pmg.errors import short_repr
from research.pmg.scenarios import scenario as scenario_entry

SPLITS = ("train", "valid", "test")
MAX_IMAGE_SIZE = 8192  # pixels a side: an 8192^2 latent batch already fills an accelerator
MAX_CHUNKS = 64  # text-encoder windows per keyword group: 64 x 75 tokens is far beyond any keyword list


@dataclass
class GenerateConfig:
    """How candidates are generated for each sample and how CLIP picks one (paper section 3.3).

    Every sample gets ``len(weight_sets) * images_per_set`` candidates, generated together in micro-batches of
    ``micro_batch`` through the UNet; CLIP scores each with d_p (personalization) and d_t (accuracy) and the
    highest ``z`` wins. Empty paths have defaults (research/pmg/layout.py): ``data`` and ``keywords`` are what the
    data and keyword stages wrote, ``out`` is ``<runtime.output_dir>/generate``; ``soft_checkpoint`` empty is
    keywords only.
    """

    weight_sets: list[list[float]] = field(default_factory=lambda: [[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]])  # (w_p, w_t)
    images_per_set: int = 1  # M images (seeds) per weight set
    weighting: Literal["scaling", "repetition"] = "scaling"  # scale the groups' embeddings / repeat keyword text
    preference_keywords: bool = True  # false: no preference keyword group (target + soft only: the baselines)
    soft_weight: float = 1.0  # w_s on the soft embedding E_m (times w_p when weighting is scaling)
    soft_checkpoint: str = ""  # soft_preference.ckpt, a step-*/ folder or a train output folder; "" = keywords only
    steps: int = 30  # denoising steps
    guidance: float = 7.5  # classifier-free guidance scale (1 = the conditional prediction alone)
    scheduler: Literal["ddim", "dpm_solver"] = "dpm_solver"  # DDIM with eta 0, or DPM-Solver++ multistep
    size: int = 0  # image side in pixels; 0 = the UNet's native size (sample_size x VAE factor)
    negative_prompt: Optional[str] = None  # None = the scenario's prompt from the official demo; "" = empty
    # Keyword texts longer than one window of SD's text encoder (tokenizer_max_length tokens, BOS and EOS
    # included): "cut" keeps the first window; "chunk" splits the text into windows of BOS + (window - 2)
    # tokens + EOS, encodes each alone and concatenates them (the official demo's long-prompt handling).
    # Training conditions the soft preference the same way (it reads these two fields).
    long_prompts: Literal["cut", "chunk"] = "cut"
    max_chunks: int = 3  # chunk: windows per keyword group, always all of them (static shapes); unused ones empty
    a: float = 0.5  # balance: z = a * log d_p + (1 - a) * log d_t; 0 when preference_keywords is false
    score_form: Literal["log", "linear"] = "log"  # log: the paper's formula; linear: a * d_p + (1 - a) * d_t
    micro_batch: int = 8  # candidates per UNet call, from several samples (the UNet sees 2x rows with guidance)
    splits: list[str] = field(default_factory=lambda: ["test"])
    max_samples: int = 0  # the first N selected samples in dataset order; 0 = all
    contact_sheets: bool = True  # history | candidates | chosen, one PNG per sample
    data: str = ""
    keywords: str = ""
    out: str = ""

    def validate(self, where: str) -> None:
        check_finite(self, where)  # values set in code bypass the loader's check
        check(bool(self.weight_sets), where, "weight_sets", "must list at least one (w_p, w_t) pair")
        check(len(self.weight_sets) <= 256, where, "weight_sets", "must list at most 256 pairs")
        for i, pair in enumerate(self.weight_sets):
            name = f"weight_sets[{i}]"
            check(isinstance(pair, (list, tuple)) and len(pair) == 2, where, name, "must be a pair [w_p, w_t]")
            check(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in pair),
                   where, name, "weights must be finite numbers")
            check(all(w >= 0 for w in pair) and any(w > 0 for w in pair), where, name,
                   "weights must be >= 0 and not both 0")
            if self.weighting == "repetition":
                check(all(float(w).is_integer() for w in pair), where, name,
                       "repetition weighting repeats keyword text: weights must be whole numbers")
        pairs = [tuple(float(w) for w in pair) for pair in self.weight_sets]
        check(len(set(pairs)) == len(pairs), where, "weight_sets", "lists a pair twice")
        check(self.images_per_set > 0, where, "images_per_set", "must be > 0")
        check(self.images_per_set <= 1024, where, "images_per_set", "must be <= 1024")
        check(self.soft_weight >= 0, where, "soft_weight", "must be >= 0")
        check(self.steps > 0, where, "steps", "must be > 0")
        check(self.steps <= 10_000, where, "steps", "must be <= 10000")
        check(self.guidance >= 1.0, where, "guidance", "must be >= 1 (1 = no guidance)")
        check(0 <= self.size <= MAX_IMAGE_SIZE, where, "size",
               f"must be in [0, {MAX_IMAGE_SIZE}] (0 = the model's native size)")
        check(1 <= self.max_chunks <= MAX_CHUNKS, where, "max_chunks", f"must be in [1, {MAX_CHUNKS}]")
        check(0.0 <= self.a <= 1.0, where, "a", "must be in [0, 1]")
        check(self.micro_batch > 0, where, "micro_batch", "must be > 0")
        check(self.micro_batch <= 4096, where, "micro_batch", "must be <= 4096")
        check(bool(self.splits), where, "splits", f"must name at least one of {list(SPLITS)}")
        for split in self.splits:
            check(split in SPLITS, where, "splits", f"{short_repr(split)} is not one of {list(SPLITS)}")
        check(len(set(self.splits)) == len(self.splits), where, "splits", "names a split twice")
        check(self.max_samples >= 0, where, "max_samples", "must be >= 0 (0 = all)")

    @property
    def num_candidates(self) -> int:
        """K weight sets times M images: the candidates of one sample."""
        return len(self.weight_sets) * self.images_per_set

    @property
    def text_chunks(self) -> int:
        """Text-encoder windows per keyword group: ``max_chunks`` with ``long_prompts: chunk``, 0 with ``cut``
        (one window, the rest of a longer text dropped; see research.pmg.models.conditioning.encode_texts)."""
        return self.max_chunks if self.long_prompts == "chunk" else 0

    @property
    def selection_a(self) -> float:
        """The ``a`` candidates are ranked with. A method generated without the preference keywords (no
        personalization, soft only) must not use them to pick its image either, so it ranks by d_t alone."""
        return self.a if self.preference_keywords else 0.0

    def negative_for(self, scenario: str) -> str:
        return scenario_entry(scenario).negative_prompt if self.negative_prompt is None else self.negative_prompt

