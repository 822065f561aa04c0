"""Keyword normalisation and the merge of per-attribute answers into one capped list.

Priority order (documented in README.md): round-robin over the attributes in template order, each
attribute's keywords in the order the LLM gave them. So the first keyword of every attribute comes before
the second keyword of any, and a cap of N keeps the most prominent answer of each attribute before a
second answer of one. The first occurrence of a keyword (after normalisation) wins.
"""
from __future__ import annotations

import unicodedata
from typing import Sequence

_DROPPED_CATEGORIES = ("Cc", "Cs", "Co")  # control, surrogate, private use
# Stripped from both ends of a keyword; hyphens are stripped only there, never inside ("sci-fi" stays).
_EDGE_CHARS = " \t\"'`“”‘’«»„‚「」『』*_.,;:!?¡¿…·-–—/\\|~^"


def normalise_keyword(text: str) -> str:
    """NFC, lower case, single spaces, quotes/markdown/punctuation stripped from the ends.

    Control characters, unpaired surrogates and U+FFFD (what a byte-level model leaves of a broken UTF-8
    sequence) are removed; format characters such as the zero-width joiner of emoji sequences stay.
    Hyphens inside a keyword and non-ASCII letters are kept as they are: ``" Sci-Fi. "`` -> ``"sci-fi"``,
    ``"**Amélie**"`` -> ``"amélie"``, ``"绿色"`` -> ``"绿色"``.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if c.isspace() else c for c in text
                   if c.isspace() or (c != "\ufffd" and unicodedata.category(c) not in _DROPPED_CATEGORIES))
    text = " ".join(text.split()).lower()
    return text.strip(_EDGE_CHARS)


def merge_ranked(answers: Sequence[Sequence[str]], cap: int | None = None) -> list[str]:
    """Round-robin union of per-attribute keyword lists, de-duplicated, at most ``cap`` long (None: all)."""
    merged: list[str] = []
    seen: set[str] = set()
    depth = max((len(a) for a in answers), default=0)
    for rank in range(depth):
        for answer in answers:
            if rank < len(answer):
                keyword = normalise_keyword(answer[rank])
                if keyword and keyword not in seen:
                    seen.add(keyword)
                    merged.append(keyword)
    return merged if cap is None else merged[:cap]


def pick_integrated(chosen: Sequence[str], merged: Sequence[str], cap: int) -> tuple[list[str], list[str]]:
    """The integrate pass's choice, kept only where it names keywords of ``merged``, filled up to ``cap``.

    Returns ``(keywords, dropped)``: the LLM's picks in its order, then the merged list in priority order
    until ``cap``; ``dropped`` are picks that were not in the merged list (invented or altered keywords).
    """
    allowed = {normalise_keyword(k) for k in merged}
    picked: list[str] = []
    dropped: list[str] = []
    for keyword in (normalise_keyword(k) for k in chosen):
        if keyword not in allowed:
            dropped.append(keyword)
        elif keyword not in picked and len(picked) < cap:
            picked.append(keyword)
    for keyword in merged:
        if len(picked) >= cap:
            break
        if keyword not in picked:
            picked.append(keyword)
    return picked, dropped
