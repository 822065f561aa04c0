"""Training pairs for the mini LLM: the keyword stage's own prompts, answered by an oracle of the sticker world.

The simulated sticker world (:mod:`research.pmg.data.sticker_set`) knows what a user likes: each user has
favourite themes, and every sticker has a theme and a Unicode caption. The oracle turns that knowledge into
the answers a good LLM would give to the keyword stage's prompts (``configs/prompts/sticker.yaml``), from
what the prompt shows and nothing else:

- **character** of a history: the character word of each theme seen at least twice (all themes ranked by
  count, ties to the most recent), at least the top one, at most three (``cats`` -> "cat");
- **emotion** of a history: the emotions of its stickers, ranked by count (ties to the most recent), at most
  three; a sticker's emotions come from its caption's words (:data:`EMOTION_MODIFIERS`, :data:`EMOTION_NOUNS`:
  "crying cat face" -> "sad") or, if it has none, from its theme (:data:`THEME_EMOTION`);
- **style** of a history: the drawing style of its dominant theme (:data:`THEME_STYLE`) and "flat";
- a **target** sticker: character = the noun phrases of its caption without emotion modifiers, then its
  theme's character word ("grinning cat face with smiling eyes" -> "cat face", "eyes", "cat"); emotion =
  the sticker's emotions; style = its theme's style and "flat";
- **integrate**: the listed keywords in list order, style words last, the first ``n`` of them.

Answers are numbered lists ("1. cat\\n2. heart"), what the prompt's answer format asks for and what
:func:`research.pmg.keywords.parse.parse_keywords` reads. Prompts are rendered by the keyword stage's
:class:`~research.pmg.keywords.prompts.PromptBuilder` with the same budget and tokenizer as at inference, so
a history the stage would shorten is shortened here too (and the oracle sees only what the prompt shows).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from research.pmg.keywords.merge import merge_ranked, normalise_keyword
from research.pmg.keywords.prompts import PromptBuilder
from research.pmg.records.samples import Item, PreparedData, Sample

KINDS = ("preference", "target", "integrate")

# --------------------------------------------------------------------------------------------------------------------
# The oracle's vocabulary
# --------------------------------------------------------------------------------------------------------------------
THEME_CHARACTER = {"cats": "cat", "hearts": "heart", "faces": "smiley face", "food": "food", "animals": "animal",
                   "plants": "plant", "weather": "weather"}
THEME_EMOTION = {"cats": "playful", "hearts": "loving", "faces": "calm", "food": "hungry", "animals": "playful",
                 "plants": "calm", "weather": "cozy"}
THEME_STYLE = {"cats": ("cute", "cartoon"), "hearts": ("colorful", "simple"), "faces": ("round", "cartoon"),
               "food": ("colorful", "detailed"), "animals": ("cute", "cartoon"), "plants": ("natural", "simple"),
               "weather": ("simple", "pastel")}
BASE_STYLE = "flat"  # every Twemoji is a flat vector drawing
STYLE_WORDS = frozenset({BASE_STYLE, *(w for words in THEME_STYLE.values() for w in words)})
# Caption words that say how a character feels; they are not part of the character ("crying cat face" -> "cat face").
EMOTION_MODIFIERS = {
    "grinning": "happy", "smiling": "happy", "winking": "playful", "relieved": "relieved", "smirking": "smug",
    "wry": "smug", "neutral": "neutral", "expressionless": "neutral", "unamused": "bored", "pensive": "sad",
    "confused": "confused", "confounded": "confused", "kissing": "loving", "heart-shaped": "loving",
    "disappointed": "sad", "worried": "worried", "angry": "angry", "pouting": "angry", "crying": "sad",
    "loudly": "sad", "persevering": "determined", "frowning": "sad", "anguished": "sad", "fearful": "scared",
    "screaming": "scared", "weary": "tired", "sleepy": "sleepy", "tired": "tired", "grimacing": "nervous",
    "hushed": "surprised", "astonished": "surprised", "flushed": "embarrassed", "sleeping": "sleepy",
    "dizzy": "confused", "rolling": "bored", "upside-down": "silly", "broken": "sad", "savouring": "delighted",
    "yawning": "sleepy", "thinking": "thoughtful", "hugging": "friendly", "nauseated": "sick", "sneezing": "sick",
    "vomiting": "sick", "shocked": "surprised", "pleading": "hopeful", "lying": "sneaky", "serious": "serious",
    "slightly": "",  # "slightly smiling face": no emotion of its own, not part of the character either
}
# Caption nouns that carry an emotion and stay part of the character ("broken heart" -> "sad", "loving").
EMOTION_NOUNS = {"heart": "loving", "kiss": "loving", "joy": "joyful", "sunglasses": "cool", "halo": "innocent",
                 "horns": "mischievous", "tongue": "playful", "mask": "sick", "fear": "scared", "triumph": "proud",
                 "sweat": "nervous"}
# Words that separate the noun phrases of a caption ("cat face with tears of joy" -> "cat face", "tears", "joy").
_PHRASE_BREAKS = frozenset({"with", "of", "and", "on", "in", "without", "behind", "but", "a", "an", "the", "for"})
MAX_PHRASE_WORDS = 3  # the prompt asks for "keywords of one to three words each"
MAX_PREFERENCE_CHARACTERS = 3
MAX_PREFERENCE_EMOTIONS = 3


def sticker_emotions(item: Item) -> list[str]:
    """The emotions a sticker shows: from its caption's words in order, else its theme's default."""
    found = []
    for word in item.title.lower().split():
        emotion = EMOTION_MODIFIERS.get(word) or EMOTION_NOUNS.get(word)
        if emotion and emotion not in found:
            found.append(emotion)
    return found or [THEME_EMOTION.get(item.category, "calm")]


def sticker_characters(item: Item) -> list[str]:
    """Noun phrases of the caption without emotion modifiers (last three words of longer ones), then the theme word."""
    phrases, current = [], []
    for word in [*item.title.lower().split(), "with"]:
        if word in _PHRASE_BREAKS:
            if current:
                phrases.append(" ".join(current[-MAX_PHRASE_WORDS:]))
            current = []
        elif word not in EMOTION_MODIFIERS:
            current.append(word)
    theme_word = THEME_CHARACTER.get(item.category)
    if theme_word:  # "face" says nothing that "smiley face" does not
        phrases = [p for p in phrases if p not in theme_word.split()] + [theme_word]
    return _unique(phrases)


def theme_style(theme: str) -> list[str]:
    return [*THEME_STYLE.get(theme, ()), BASE_STYLE]


def _ranked(values_per_item: Sequence[Sequence[str]]) -> list[str]:
    """Values by how many items show them, ties to the most recently shown (items oldest first)."""
    count, last = Counter(), {}
    for position, values in enumerate(values_per_item):
        for value in _unique(values):
            count[value] += 1
            last[value] = position
    return sorted(count, key=lambda v: (-count[v], -last[v]))


def preference_answer(history: Sequence[Item], attribute: str) -> list[str]:
    """The oracle's keywords for a history (oldest first, exactly the items the prompt shows)."""
    themes = _ranked([[item.category] for item in history])
    if attribute == "character":
        counts = Counter(item.category for item in history)
        kept = [t for t in themes if counts[t] >= 2] or themes[:1]
        return [THEME_CHARACTER.get(t, t) for t in kept[:MAX_PREFERENCE_CHARACTERS]]
    if attribute == "emotion":
        return _ranked([sticker_emotions(item) for item in history])[:MAX_PREFERENCE_EMOTIONS]
    if attribute == "style":
        return theme_style(themes[0])
    raise ValueError(f"unknown sticker attribute {attribute!r}")


def target_answer(item: Item, attribute: str) -> list[str]:
    """The oracle's keywords for one target sticker."""
    if attribute == "character":
        return sticker_characters(item)
    if attribute == "emotion":
        return sticker_emotions(item)
    if attribute == "style":
        return theme_style(item.category)
    raise ValueError(f"unknown sticker attribute {attribute!r}")


def integrate_answer(keywords: Sequence[str], n: int) -> list[str]:
    """The ``n`` most distinctive of ``keywords``: list order, the style words every sticker shares last."""
    ordered = [k for k in keywords if k not in STYLE_WORDS] + [k for k in keywords if k in STYLE_WORDS]
    return ordered[:n]


def oracle_vocabulary() -> list[str]:
    """Every keyword the oracle can give for the style/emotion/theme parts (integrate lists are drawn from it)."""
    words = [*THEME_CHARACTER.values(), *THEME_EMOTION.values(), *STYLE_WORDS,
             *(v for v in EMOTION_MODIFIERS.values() if v), *EMOTION_NOUNS.values()]
    return sorted(set(words))


def render_answer(keywords: Sequence[str]) -> str:
    """A numbered list, one keyword a line: the format the prompts ask for."""
    return "\n".join(f"{i}. {k}" for i, k in enumerate(keywords, start=1))


def _unique(values: Iterable[str]) -> list[str]:
    out = []
    for value in values:
        if value and value not in out:
            out.append(value)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One training example: the exact prompt the keyword stage sends, and the oracle's keywords."""

    kind: str  # "preference", "target" or "integrate"
    attribute: str  # the sticker attribute, or "integrate"
    prompt: str
    keywords: tuple[str, ...]
    history_used: int = 0  # preference prompts: history items the prompt shows

    @property
    def answer(self) -> str:
        return render_answer(self.keywords)


def preference_pairs(builder: PromptBuilder, samples: Sequence[Sample], items: dict[str, Item]) -> list[Pair]:
    """One pair per sample and attribute, distinct prompts only (answers depend only on the prompt)."""
    pairs, seen = [], set()
    for sample in samples:
        for prompt in builder.preference(sample, items):
            if prompt.text in seen:
                continue
            seen.add(prompt.text)
            shown = [items[i] for i in sample.history[len(sample.history) - prompt.history_used:]]
            pairs.append(Pair("preference", prompt.attribute, prompt.text,
                              tuple(preference_answer(shown, prompt.attribute)), prompt.history_used))
    return pairs


def target_pairs(builder: PromptBuilder, items: Iterable[Item]) -> list[Pair]:
    """One pair per sticker and attribute."""
    return [Pair("target", prompt.attribute, prompt.text, tuple(target_answer(item, prompt.attribute)))
            for item in items for prompt in builder.target(item)]


def integrate_pairs(builder: PromptBuilder, merged_lists: Sequence[Sequence[str]], count: int, caps: Sequence[int],
                    seed: int) -> list[Pair]:
    """``count`` integrate prompts over keyword lists longer than the cap they are asked with.

    Half are merged oracle lists as the keyword stage would send them (priority order), half are shuffled, so
    the model learns to copy from the list rather than to recite the usual order.
    """
    rng = random.Random(seed)
    pool = [list(m) for m in merged_lists if len(m) > min(caps)]
    vocabulary = oracle_vocabulary()
    pairs = []
    while len(pairs) < count:
        cap = rng.choice(list(caps))
        keywords = list(rng.choice(pool)) if pool else []
        extra = [w for w in rng.sample(vocabulary, len(vocabulary)) if w not in keywords]
        keywords += extra[:max(0, cap + rng.randint(1, 3) - len(keywords))]
        if len(pairs) % 2:
            rng.shuffle(keywords)
        prompt = builder.integrate(keywords, cap)
        pairs.append(Pair("integrate", "integrate", prompt.text, tuple(integrate_answer(keywords, cap))))
    return pairs


def merged_oracle_lists(pairs: Sequence[Pair], attributes: Sequence[str]) -> list[list[str]]:
    """The keyword stage's merge (round robin over attributes) of consecutive per-attribute oracle answers."""
    lists, group = [], []
    for pair in pairs:
        group.append(pair.keywords)
        if len(group) == len(attributes):
            lists.append(merge_ranked(group))
            group = []
    return lists


def data_hash(pairs: Iterable[Pair]) -> str:
    """SHA-256 of every pair's kind, prompt and answer, in order: identifies the training data."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.kind, pair.attribute, pair.prompt, pair.answer], ensure_ascii=False).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Token arrays
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TokenArrays:
    """Right-padded training rows and where their answers are.

    ``ids (n, seq_length)``: ``tokenizer(prompt)`` (BOS first, exactly what the keyword engine feeds), the
    answer tokens and EOS, then pad. ``positions (n, max_answer)``: the positions whose next token is an answer
    token (the last prompt token, then each answer token but the EOS); ``labels``: those next tokens;
    ``answer_mask``: 1 where a slot is used. The loss is the mean cross-entropy over used slots.
    """

    ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    answer_mask: np.ndarray
    kinds: np.ndarray  # index into KINDS, per row

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        return self.ids[rows], self.positions[rows], self.labels[rows], self.answer_mask[rows]


def encode_pairs(pairs: Sequence[Pair], encode_prompt: Callable[[str], list[int]],
                 encode_answer: Callable[[str], list[int]], seq_length: int, max_answer: int, pad_id: int,
                 eos_id: int) -> TokenArrays:
    """Token arrays for ``pairs``; ValueError naming the pair if it does not fit ``seq_length``/``max_answer``.

    ``max_answer`` is the keyword stage's ``max_new_tokens``: a longer answer could never be generated whole.
    """
    n = len(pairs)
    ids = np.full((n, seq_length), pad_id, dtype=np.int32)
    positions = np.zeros((n, max_answer), dtype=np.int32)
    labels = np.zeros((n, max_answer), dtype=np.int32)
    mask = np.zeros((n, max_answer), dtype=np.float32)
    for row, pair in enumerate(pairs):
        prompt = encode_prompt(pair.prompt)
        answer = encode_answer(pair.answer) + [eos_id]
        if len(answer) > max_answer:
            raise ValueError(f"{pair.kind} pair {row} ({pair.attribute}): the answer needs {len(answer)} tokens, "
                             f"more than keywords.max_new_tokens = {max_answer}: {pair.answer!r}")
        if len(prompt) + len(answer) - 1 > seq_length:  # the EOS is predicted, never fed
            raise ValueError(f"{pair.kind} pair {row} ({pair.attribute}) needs {len(prompt) + len(answer) - 1} "
                             f"tokens, more than llm.seq_length = {seq_length}")
        row_ids = prompt + answer[:-1]
        ids[row, :len(row_ids)] = row_ids
        k = len(answer)
        positions[row, :k] = np.arange(len(prompt) - 1, len(prompt) - 1 + k)
        labels[row, :k] = answer
        mask[row, :k] = 1.0
    kinds = np.array([KINDS.index(p.kind) for p in pairs], dtype=np.int32)
    return TokenArrays(ids=ids, positions=positions, labels=labels, answer_mask=mask, kinds=kinds)


# --------------------------------------------------------------------------------------------------------------------
# Scoring answers against the oracle
# --------------------------------------------------------------------------------------------------------------------
def keyword_f1(predicted: Sequence[str], expected: Sequence[str]) -> float:
    """F1 of two keyword sets (normalised); 1.0 when both are empty."""
    p = {normalise_keyword(k) for k in predicted}
    e = {normalise_keyword(k) for k in expected}
    if not p and not e:
        return 1.0
    hits = len(p & e)
    return 0.0 if hits == 0 else 2 * hits / (len(p) + len(e))


def score_records(records: Sequence[dict], prepared: PreparedData) -> dict:
    """Per-answer F1 and exact match of keyword-stage records against the oracle, by kind and attribute.

    ``records`` are the keyword stage's output records (``keywords.jsonl`` lines); preference answers are
    judged on the history items their prompt showed (``history_used``). Targets shared by samples count once.
    Returns ``{"<kind>/<attribute>": {"n", "f1", "exact"}, ..., "preference": ..., "target": ..., "all": ...}``.
    """
    rows: dict[str, list[tuple[float, float]]] = {}
    seen_targets = set()
    for record in records:
        sample_history = [prepared.items[i] for i in _history_of(record, prepared)]
        for answer in record["preference_detail"]["answers"]:
            shown = sample_history[len(sample_history) - answer["history_used"]:]
            expected = preference_answer(shown, answer["attribute"])
            _add(rows, f"preference/{answer['attribute']}", answer["keywords"], expected)
        if record["target"] in seen_targets:
            continue
        seen_targets.add(record["target"])
        for answer in record["target_detail"]["answers"]:
            expected = target_answer(prepared.items[record["target"]], answer["attribute"])
            _add(rows, f"target/{answer['attribute']}", answer["keywords"], expected)
    out = {key: _summary(values) for key, values in sorted(rows.items())}
    for kind in ("preference", "target"):
        out[kind] = _summary([v for key, values in rows.items() if key.startswith(kind + "/") for v in values])
    out["all"] = _summary([v for values in rows.values() for v in values])
    return out


def _history_of(record: dict, prepared: PreparedData) -> tuple[str, ...]:
    for sample in prepared.samples:
        if sample.id == record["id"]:
            return sample.history
    raise KeyError(f"sample {record['id']!r} is not in {prepared.root}")


def _add(rows: dict, key: str, predicted: Sequence[str], expected: Sequence[str]) -> None:
    exact = float([normalise_keyword(k) for k in predicted] == [normalise_keyword(k) for k in expected])
    rows.setdefault(key, []).append((keyword_f1(predicted, expected), exact))


def _summary(values: Sequence[tuple[float, float]]) -> dict:
    if not values:
        return {"n": 0, "f1": 0.0, "exact": 0.0}
    return {"n": len(values), "f1": round(float(np.mean([v[0] for v in values])), 4),
            "exact": round(float(np.mean([v[1] for v in values])), 4)}


def write_jsonl(path: Path, pairs: Sequence[Pair]) -> None:
    """The pairs as JSONL (kind, attribute, prompt, answer), for inspection."""
    from research.pmg.files import to_jsonl, write_atomic

    write_atomic(path, to_jsonl([{"kind": p.kind, "attribute": p.attribute, "prompt": p.prompt, "answer": p.answer}
                                 for p in pairs]))
