"""What the trainer and the generator read of one sample: its history prompt, keyword texts and target image.

The history prompt is the bias-correction LLM's input; :func:`tokenize_prompts` pads it on the right to the
static length the soft-preference encoder compiles for (``prompt_len``, see models/soft_preference.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from research.pmg.records.samples import PreparedData

# sample id -> record with ``preference_keywords`` and ``target_keywords`` (research.pmg.records.keywords)
Keywords = Mapping[str, Any]


@dataclass(frozen=True)
class Example:
    """What training needs of one sample, as text and a file path."""

    sample_id: str
    split: str
    history_prompt: str  # the user's history, read by the bias-correction LLM
    target_text: str  # target keywords, comma-joined
    preference_text: str  # preference keywords, comma-joined
    target_image: Path


def render_history_prompt(titles: list[str]) -> str:
    """The history prompt of the bias-correction LLM, in the Llama-2-chat format (oldest item first)."""
    items = "; ".join(" ".join(t.split()) for t in titles)
    return f"[INST] A user recently interacted with these items: {items}. Describe the user's taste. [/INST]"


def tokenize_prompts(tokenizer, prompts: list[str], prompt_len: int, pad_id: int) -> np.ndarray:
    """Right-padded ids ``(n, prompt_len)`` (text first; the soft-preference encoder puts its L tokens right after
    it); over-long prompts keep BOS and their most recent tokens."""
    out = np.full((len(prompts), prompt_len), pad_id, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=True).input_ids
        if len(ids) > prompt_len:
            ids = ids[:1] + ids[len(ids) - prompt_len + 1:]
        out[row, :len(ids)] = ids
    return out


def examples_from(prepared: PreparedData, keywords: Keywords) -> list[Example]:
    """One :class:`Example` per sample that has keywords, in the prepared order."""
    out = []
    for sample in prepared.samples:
        if sample.id not in keywords:
            continue
        record = keywords[sample.id]
        preference, target = record.preference_keywords, record.target_keywords
        titles = [prepared.items[item_id].title for item_id in sample.history]
        out.append(Example(sample_id=sample.id, split=sample.split, history_prompt=render_history_prompt(titles),
                              target_text=", ".join(target), preference_text=", ".join(preference),
                              target_image=prepared.image_path(sample.target)))
    return out
