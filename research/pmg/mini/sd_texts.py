"""The texts the mini SD learns to draw from: a sticker's caption and the keyword texts PMG conditions it on.

PMG never shows Stable Diffusion a caption: generation conditions on the target keywords and the preference
keywords, each comma-joined (``research.pmg.train.build.examples_from``). A mini SD trained on Unicode captions
alone knows "cat" (it is in cat captions) but not "food", "weather", "hungry" or "cartoon", so preference
keywords such as "food, hungry, colorful, flat" would be noise to it. It is therefore trained on three texts per
sticker, each the way the keyword stage would produce it for the mini world's oracle
(:mod:`research.pmg.mini.llm_data`, the answers the mini Llama is trained to give):

- ``caption``: the Unicode name ("grinning cat face with smiling eyes");
- ``target``: the oracle's target keywords, merged over the attributes as the keyword stage merges them
  ("cat face, eyes, cat, happy, ...");
- ``theme``: the oracle's preference keywords for a history of this one sticker ("cat, happy, cute, flat"):
  what a user who loves such stickers gets as preference keywords.
"""
from __future__ import annotations

from typing import Sequence

from research.pmg.keywords.merge import merge_ranked
from research.pmg.mini.llm_data import preference_answer, target_answer
from research.pmg.records.samples import Item

VARIANTS = ("caption", "target", "theme")
# The sticker templates' attributes (configs/prompts/sticker.yaml), in template order: the merge order.
ATTRIBUTES = ("character", "emotion", "style")
NUM_TARGET, NUM_PREFERENCE = 10, 8  # the keyword stage's caps (keywords.num_target / num_preference defaults)


def sticker_texts(item: Item, attributes: Sequence[str] = ATTRIBUTES) -> tuple[str, str, str]:
    """``(caption, target, theme)`` texts of one sticker (``item.title`` is its caption, ``category`` its theme)."""
    target = merge_ranked([target_answer(item, a) for a in attributes], cap=NUM_TARGET)
    theme = merge_ranked([preference_answer([item], a) for a in attributes], cap=NUM_PREFERENCE)
    return item.title.lower(), ", ".join(target), ", ".join(theme)
