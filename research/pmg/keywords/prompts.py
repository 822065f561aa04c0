"""Prompt templates as data (``configs/prompts/<set>.yaml``) and their safe rendering into chat prompts.

A template set holds, for one scenario, the paper's task instruction p, the attributes a_i with their format
examples e, a target-item prompt and the prompt of the optional integrate pass. :class:`PromptBuilder` fills
them with item text and wraps the result in a chat format (Llama-2-chat ``[INST] <<SYS>>`` by default).

Item text comes from datasets, not from us, so it is neutralised first (:func:`clean_text`): control and
bidi characters go, chat-template markers (``[INST]``, ``<</SYS>>``, ``</s>``, ``<|im_start|>``,
``### Human:``) lose their brackets, and long titles are cut. ``</s>`` matters most: the Llama tokenizer
turns that text into the end-of-sequence token. Histories that do not fit the model's context lose their
oldest items first (see :meth:`PromptBuilder.preference`).
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from research.pmg.errors import PMGError
from research.pmg.records.samples import Item, Sample
from research.pmg.scenarios import scenario as scenario_entry

PROMPTS_DIR = Path(__file__).resolve().parents[3] / "configs" / "prompts"


class PromptError(PMGError, ValueError):
    """A template file is malformed, or a prompt cannot fit the model's context."""


# ---------------------------------------------------------------------------------------------------------------------
# Chat formats
# ---------------------------------------------------------------------------------------------------------------------
# {system} and {user} are replaced literally (not with str.format: the text holds braces). The tokenizer adds
# the BOS token <s>. llama2 is the Llama-2-chat template as Meta and Hugging Face define it; human_assistant
# is the official PMG code's format; chatml and plain serve other chat or base models.
CHAT_FORMATS = {
    "llama2": "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]",
    "human_assistant": "{system}\n### Human: {user}\n### Assistant:",
    "chatml": "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n",
    "plain": "{system}\n\n{user}\n\nAnswer:\n",
}


def chat_prompt(chat_format: str, system: str, user: str) -> str:
    if chat_format not in CHAT_FORMATS:
        raise PromptError(f"chat format {chat_format!r}: choose one of {list(CHAT_FORMATS)}")
    return CHAT_FORMATS[chat_format].replace("{system}", system.strip()).replace("{user}", user.strip())


# ---------------------------------------------------------------------------------------------------------------------
# Neutralising item text
# ---------------------------------------------------------------------------------------------------------------------
_MARKERS = re.compile(r"\[/?INST\]|<</?SYS>>|</?s>|<unk>|<\|[A-Za-z_]{1,20}\|>"
                      r"|#{2,}\s*(?:Human|Assistant|System|User)\s*:", re.IGNORECASE)
_MARKER_PUNCT = re.compile(r"[\[\]<>|#/]")
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
ELLIPSIS = "\u2026"


def clean_text(text: str, max_chars: int) -> str:
    """``text`` made safe to place inside a prompt, on one line, at most ``max_chars`` characters.

    NFC-normalised; control characters, line and paragraph separators become spaces; bidi overrides are
    dropped (zero-width joiners stay: emoji sequences need them); chat markers keep only their letters, as a
    separate word (``[INST]`` -> ``INST``, ``</s>`` -> ``s``), repeated until none is left, so nested markers
    cannot re-form; whitespace collapses; longer text is cut and ends with an ellipsis.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text if c not in _BIDI)
    while True:
        defused = _MARKERS.sub(lambda m: f" {_MARKER_PUNCT.sub('', m.group())} ", text)
        if defused == text:
            break
        text = defused
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + ELLIPSIS
    return text


# ---------------------------------------------------------------------------------------------------------------------
# Template sets
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attribute:
    """One attribute a_i: its name (recorded in the output), its wording in a question, and examples e."""

    name: str
    text: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class TemplateSet:
    """The prompts of one scenario, as loaded from ``configs/prompts/<name>.yaml``."""

    name: str
    version: int
    system: str
    item_title: str
    item_details: tuple[str, ...]
    preference: str
    target: str
    answer_format: str
    integrate: str
    attributes: tuple[Attribute, ...]
    source: str

    @property
    def id(self) -> str:
        """Name and version: part of the cache key, so a reworded prompt set never reuses old answers."""
        return f"{self.name}@v{self.version}"


_TOP_KEYS = ("name", "version", "system", "item", "preference", "target", "answer_format", "integrate", "attributes")
# Placeholders each part may use, and those it must use.
_ALLOWED = {"preference": {"history", "conversation", "attribute"}, "target": {"item", "attribute"},
            "answer_format": {"n", "examples"}, "integrate": {"keywords", "n", "examples"}}
_REQUIRED = {"preference": {"history", "attribute"}, "target": {"item", "attribute"},
             "answer_format": {"n"}, "integrate": {"keywords", "n"}}


def resolve_templates(spec: str, scenario: str) -> Path:
    """The YAML file named by ``keywords.templates``: a set name under ``configs/prompts/``, or a path."""
    if not spec:
        spec = scenario_entry(scenario).prompts
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        return Path(spec)
    return PROMPTS_DIR / f"{spec}.yaml"


def load_templates(path: str | Path) -> TemplateSet:
    """Read and check a template set; raise :class:`PromptError` naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
        raise PromptError(f"{path}: prompt template file not found (sets in {PROMPTS_DIR}: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: not valid YAML: {exc}") from None
    where = f"{path}: "
    if not isinstance(raw, dict):
        raise PromptError(f"{where}top level must be a mapping")
    _keys(raw, _TOP_KEYS, _TOP_KEYS, where, "top level")
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PromptError(f"{where}field 'version' must be an integer >= 1, got {version!r}")
    texts = {key: _text(raw, key, where) for key in ("name", "system", *_ALLOWED)}
    for part, allowed in _ALLOWED.items():
        used = _placeholders(texts[part], where, part)
        if used - allowed:
            raise PromptError(f"{where}field '{part}' uses unknown placeholder {{{sorted(used - allowed)[0]}}} "
                              f"(allowed: {', '.join(sorted(allowed))})")
        if _REQUIRED[part] - used:
            raise PromptError(f"{where}field '{part}' must contain {{{sorted(_REQUIRED[part] - used)[0]}}}")
    item = raw["item"]
    if not isinstance(item, dict):
        raise PromptError(f"{where}field 'item' must be a mapping with 'title' and 'details'")
    _keys(item, ("title", "details"), ("title",), where, "item")
    title = _text(item, "title", where, "item.")
    _placeholders(title, where, "item.title")
    details = item.get("details") or []
    if not isinstance(details, list) or not all(isinstance(d, str) for d in details):
        raise PromptError(f"{where}field 'item.details' must be a list of field names")
    attributes = raw["attributes"]
    if not isinstance(attributes, list) or not attributes:
        raise PromptError(f"{where}field 'attributes' must be a non-empty list")
    parsed, seen = [], set()
    for i, attr in enumerate(attributes):
        at = f"attributes[{i}]"
        if not isinstance(attr, dict):
            raise PromptError(f"{where}field '{at}' must be a mapping with name, text, examples")
        _keys(attr, ("name", "text", "examples"), ("name", "text", "examples"), where, at)
        name = _text(attr, "name", where, f"{at}.")
        if name in seen:
            raise PromptError(f"{where}field '{at}.name': attribute {name!r} appears twice")
        seen.add(name)
        examples = attr["examples"]
        if not isinstance(examples, list) or not examples or not all(isinstance(e, str) and e.strip()
                                                                     for e in examples):
            raise PromptError(f"{where}field '{at}.examples' must be a non-empty list of strings")
        parsed.append(Attribute(name=name, text=_text(attr, "text", where, f"{at}."), examples=tuple(examples)))
    return TemplateSet(name=texts["name"], version=version, system=texts["system"], item_title=title,
                       item_details=tuple(details), preference=texts["preference"], target=texts["target"],
                       answer_format=texts["answer_format"], integrate=texts["integrate"],
                       attributes=tuple(parsed), source=str(path))


def _keys(obj: dict, known: Sequence[str], required: Sequence[str], where: str, what: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise PromptError(f"{where}unknown field '{unknown[0]}' in {what} (known: {', '.join(known)})")
    missing = [k for k in required if k not in obj]
    if missing:
        raise PromptError(f"{where}missing field '{missing[0]}' in {what}")


def _text(obj: dict, key: str, where: str, prefix: str = "") -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise PromptError(f"{where}field '{prefix}{key}' must be a non-empty string")
    return value


def _placeholders(text: str, where: str, part: str) -> set[str]:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise PromptError(f"{where}field '{part}': bad braces: {exc} "
                          f"(write {{{{ and }}}} for literal braces)") from None
    bad = sorted(f for f in fields if not f.isidentifier())
    if bad:
        raise PromptError(f"{where}field '{part}': placeholder {{{bad[0]}}} is not a plain name")
    return fields


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    """A rendered prompt for one attribute; ``history_used``/``turns_used`` record any truncation."""

    attribute: str
    text: str
    history_used: int = 0
    turns_used: int = 0


class PromptBuilder:
    """Renders a template set into chat prompts that fit ``budget`` tokens (context minus answer length).

    ``count_tokens`` is the LLM tokenizer's length of a prompt (BOS included).
    """

    def __init__(self, templates: TemplateSet, chat_format: str, *, per_attribute: int, max_item_chars: int,
                 count_tokens: Callable[[str], int], budget: int):
        if chat_format not in CHAT_FORMATS:
            raise PromptError(f"chat format {chat_format!r}: choose one of {list(CHAT_FORMATS)}")
        self.templates, self.chat_format = templates, chat_format
        self.per_attribute, self.max_item_chars = per_attribute, max_item_chars
        self.count_tokens, self.budget = count_tokens, budget

    def item_text(self, item: Item) -> str:
        """``title (detail; detail)`` with the template's detail fields that the item has, cleaned and cut."""
        fields = _item_fields(item)
        title = self.templates.item_title.format_map(defaultdict(str, fields))  # a missing field is empty
        details = [fields.get(name, "") for name in self.templates.item_details]
        details = [d for d in (clean_text(v, self.max_item_chars) for v in details) if d]
        text = f"{title} ({'; '.join(details)})" if details else title
        return clean_text(text, self.max_item_chars)

    def preference(self, sample: Sample, items: dict[str, Item]) -> list[Prompt]:
        """One prompt per attribute from the sample's history (oldest first) and conversation.

        Too long a prompt drops the oldest history items first, down to the most recent one, then the oldest
        conversation turns, down to the last one; if it still does not fit, :class:`PromptError`.
        """
        history = [self.item_text(items[i]) for i in sample.history]
        turns = [clean_text(t, self.max_item_chars) for t in sample.conversation]
        turns = [t for t in turns if t]
        prompts = []
        for attribute in self.templates.attributes:
            n_items, n_turns = len(history), len(turns)
            while True:
                text = self._preference_text(attribute, history[len(history) - n_items:],
                                             turns[len(turns) - n_turns:])
                size = self.count_tokens(text)
                if size <= self.budget:
                    break
                if n_items > 1:
                    n_items -= 1
                elif n_turns > 1:
                    n_turns -= 1
                else:
                    raise PromptError(
                        f"sample {sample.id}: the {attribute.name!r} prompt needs {size} tokens even with one history "
                        f"item, more than the {self.budget} left by models.llm.seq_length minus "
                        f"keywords.max_new_tokens; raise seq_length or shorten the template {self.templates.source}")
            prompts.append(Prompt(attribute.name, text, history_used=n_items, turns_used=n_turns))
        return prompts

    def target(self, item: Item) -> list[Prompt]:
        """One prompt per attribute about the target item alone (the paper's h_t with its summary x_t)."""
        text_of_item = self.item_text(item)
        prompts = []
        for attribute in self.templates.attributes:
            user = self.templates.target.format_map({"item": text_of_item, "attribute": attribute.text})
            text = self._wrap(user, attribute.examples)
            self._check_fits(text, f"item {item.id}: the {attribute.name!r} target prompt")
            prompts.append(Prompt(attribute.name, text))
        return prompts

    def integrate(self, keywords: Sequence[str], n: int) -> Prompt:
        """The integrate pass: pick the ``n`` most distinctive of ``keywords`` (already normalised text)."""
        listing = "\n".join(f"- {clean_text(k, self.max_item_chars)}" for k in keywords)
        examples = [a.examples[0] for a in self.templates.attributes][:3]
        user = self.templates.integrate.format_map({"keywords": listing, "n": n, "examples": _numbered(examples)})
        text = chat_prompt(self.chat_format, self.templates.system, user)
        self._check_fits(text, f"the integrate prompt for {len(keywords)} keywords")
        return Prompt("integrate", text)

    def _preference_text(self, attribute: Attribute, history: list[str], turns: list[str]) -> str:
        values = {"history": "\n".join(f"- {h}" for h in history),
                  "conversation": "\n".join(f"- {t}" for t in turns) or "(none)",
                  "attribute": attribute.text}
        return self._wrap(self.templates.preference.format_map(values), attribute.examples)

    def _wrap(self, question: str, examples: Sequence[str]) -> str:
        answer_format = self.templates.answer_format.format_map(
            {"n": self.per_attribute, "examples": _numbered(examples)})
        return chat_prompt(self.chat_format, self.templates.system, f"{question.strip()}\n{answer_format.strip()}")

    def _check_fits(self, text: str, what: str) -> None:
        size = self.count_tokens(text)
        if size > self.budget:
            raise PromptError(f"{what} needs {size} tokens, more than the {self.budget} left by "
                              f"models.llm.seq_length minus keywords.max_new_tokens")


def _numbered(examples: Sequence[str]) -> str:
    return "\n".join(f"{i}. {e}" for i, e in enumerate(examples, start=1))


def _item_fields(item: Item) -> dict[str, str]:
    """Every text field of an item by name, for ``item.title`` and ``item.details`` (raw, not yet cleaned)."""
    fields: dict[str, Any] = dict(item.attributes)
    fields.update(id=item.id, title=item.title, category=item.category, genres=", ".join(item.genres),
                  keywords=", ".join(item.keywords))
    return fields
