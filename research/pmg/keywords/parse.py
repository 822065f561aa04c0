"""Keywords out of what an LLM really answers: lists in any common shape, with the chatter around them removed.

The rules, in order (README.md of this package lists them with examples):

1. The answer ends where the model starts a new turn (``</s>``, ``[INST]``, ``### Human:``, ``<|im_start|>``);
   leftover special tokens (``<s>``, ``[/INST]``, ``<unk>``) are removed.
2. If some lines are list items (``1.``, ``1)``, ``(1)``, ``-``, ``*``, ``•``), only those lines count: the
   lines around them are preambles ("Sure! Here are the keywords:") and remarks ("I hope this helps").
   Otherwise every line counts, except headers that end with a colon.
3. A line may hold an inline numbered list ("1. cute 2. cartoon 3. bear"); it is split at consecutive numbers.
4. In each item: parentheses are dropped ("sci-fi (science fiction)"); an explanation after `` - ``, `` – ``,
   `` — `` is dropped ("cute - the user likes ..."); for ``X: Y`` the keyword part is Y when Y is a list or a
   short phrase ("Keywords: a, b", "Genre: comedy") and X otherwise ("Cute: the stickers show ...");
   a sentence after ``. `` that is longer than a keyword is dropped.
5. Items split at commas and semicolons (also ``，``, ``、``, ``；``); in such a list the last item also splits
   at "and" ("navy blue, beige and black"), and a leading "and"/"or" goes. A lone "black and white" stays.
6. Each piece is normalised (:func:`research.pmg.keywords.merge.normalise_keyword`: NFC, lower case, single
   spaces, quotes and edge punctuation stripped; hyphens and non-ASCII letters kept). Pieces that say nothing
   ("none", "n/a", "unknown") are fillers; pieces longer than ``max_words`` words or 48 characters, or that
   talk about the user or the answer ("the user prefers ...", "here are"), are rejected; duplicates go.

The result keeps every rejected piece and a status: ``ok`` (some keywords), ``empty`` (no text at all),
``none`` (the model said there is nothing), ``unparseable`` (text, but no keyword in it).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from research.pmg.keywords.merge import normalise_keyword

STATUSES = ("ok", "empty", "none", "unparseable")
MAX_KEYWORD_CHARS = 48

_END_OF_ANSWER = re.compile(r"</s>|\[INST\]|<\|im_end\|>|<\|im_start\|>|<\|endoftext\|>|#{2,}\s*(?:Human|User)\s*:",
                            re.IGNORECASE)
_SPECIAL = re.compile(r"<s>|\[/INST\]|<unk>|<</?SYS>>|<\|[a-z_]+\|>|#{2,}\s*Assistant\s*:", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.)]|\d{1,3}\s*[-:]|[-*+•·▪◦‣–—])\s+")
_NUMBER_MARKER = re.compile(r"^\s*\(?(\d{1,3})[.)]\s+")
_INLINE_NUMBER = re.compile(r"(?<!\S)\(?(\d{1,3})[.)]\s+")
_PARENTHESES = re.compile(r"\s*[(（\[][^()（）\[\]]*[)）\]]")
_DASH_EXPLANATION = re.compile(r"\s+(?:-{1,2}|–|—)\s+")
_COLON = re.compile(r"\s*[:：]\s*")
_SENTENCE_END = re.compile(r"(?<=[^\s.])[.!?。！？]\s+")
_SEPARATORS = re.compile(r"\s*[,;，、；]\s*")
_FINAL_AND = re.compile(r"\s+(?:and|&)\s+", re.IGNORECASE)
_LEADING_CONJUNCTION = re.compile(r"^(?:and|or|&)\s+", re.IGNORECASE)
_WORD_CHARS = re.compile(r"\w", re.UNICODE)
_FILLERS = frozenset({
    "none", "n/a", "na", "nil", "null", "nothing", "unknown", "not applicable", "not specified", "not mentioned",
    "not available", "no preference", "no specific preference", "no clear preference", "not sure", "unclear",
    "various", "varied", "mixed", "other", "others", "etc", "misc", "n.a", "-",
})
# Words that mark a piece as talk about the task rather than a keyword ("the user prefers ...", "here are").
_CHATTER = frozenset({
    "user", "user's", "users", "prefer", "prefers", "preferred", "preference", "preferences", "seems", "seem",
    "appears", "based", "here", "sure", "hope", "helps", "keyword", "keywords", "following", "answer",
    "certainly", "glad", "i'm", "i've", "assist", "list",
})


@dataclass(frozen=True)
class ParseResult:
    """Keywords of one answer, in answer order, plus what was rejected and why the answer may be empty."""

    keywords: tuple[str, ...]
    status: str  # one of STATUSES
    rejected: tuple[str, ...] = ()


def parse_keywords(text: str, *, max_words: int = 4) -> ParseResult:
    """Parse one LLM answer into normalised, de-duplicated keywords (rules in the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    end = _END_OF_ANSWER.search(text)
    if end:
        text = text[:end.start()]
    text = _SPECIAL.sub(" ", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ParseResult((), "empty")

    list_lines = [line for line in lines if _LIST_MARKER.match(line)]
    pieces: list[str] = []
    rejected: list[str] = []
    for line in list_lines or lines:
        if list_lines:
            content = line if _NUMBER_MARKER.match(line) else _LIST_MARKER.sub("", line, count=1)
        elif line.endswith((":", "：")):
            continue  # a header: "Here are the keywords:"
        else:
            content = _keyword_side(line, max_words)
            if len(content.split()) > max_words and _is_chatter(normalise_keyword(content)):
                rejected.append(normalise_keyword(content))  # prose: "The user likes cute stickers, ..."
                continue
        segments = _split_numbered(content) if _NUMBER_MARKER.match(content) else [content]
        for segment in segments:
            pieces.extend(_pieces(segment, max_words))

    keywords: list[str] = []
    fillers = 0
    for piece in pieces:
        keyword = normalise_keyword(_LEADING_CONJUNCTION.sub("", piece))
        if not keyword or not _WORD_CHARS.search(keyword):
            continue
        if keyword in _FILLERS or keyword.rstrip(".") in _FILLERS:
            fillers += 1
        elif _too_long(keyword, max_words) or _is_chatter(keyword):
            rejected.append(keyword)
        elif keyword not in keywords:
            keywords.append(keyword)
    if keywords:
        status = "ok"
    elif fillers and not rejected:
        status = "none"
    else:
        status = "unparseable"
    return ParseResult(tuple(keywords), status, tuple(rejected))


def _split_numbered(content: str) -> list[str]:
    """Split "1. a 2. b 3. c" at consecutive numbers; other numbers ("Blade Runner 2049", "3.5") stay."""
    first = _NUMBER_MARKER.match(content)
    expected, cuts = int(first.group(1)), []
    for match in _INLINE_NUMBER.finditer(content):
        if int(match.group(1)) == expected:
            cuts.append(match)
            expected += 1
    segments = []
    for i, match in enumerate(cuts):
        end = cuts[i + 1].start() if i + 1 < len(cuts) else len(content)
        segments.append(content[match.end():end].strip())
    return segments


def _pieces(segment: str, max_words: int) -> list[str]:
    """Keyword candidates of one list item: parentheses and explanations removed, then split at commas."""
    segment = _PARENTHESES.sub("", segment)
    segment = _DASH_EXPLANATION.split(segment, maxsplit=1)[0]
    segment = _keyword_side(segment, max_words)
    sentences = _SENTENCE_END.split(segment, maxsplit=1)
    if len(sentences) == 2 and len(sentences[1].split()) > max_words:
        segment = sentences[0]
    pieces = [p for p in _SEPARATORS.split(segment) if p.strip()]
    if len(pieces) > 1:  # "navy blue, beige and black": the last item of an English list
        pieces[-1:] = _FINAL_AND.split(pieces[-1], maxsplit=1)
    return pieces


def _keyword_side(text: str, max_words: int) -> str:
    """For ``X: Y`` the side holding the keyword(s): Y if it is a list or a short phrase, else X."""
    parts = _COLON.split(text, maxsplit=1)
    if len(parts) < 2:
        return text
    head, tail = parts
    if not tail.strip():
        return head
    if not head.strip():
        return tail
    if _SEPARATORS.search(tail) or _NUMBER_MARKER.match(tail):
        return tail
    words = normalise_keyword(tail)
    if words and len(words.split()) <= max_words and not _is_chatter(words):
        return tail
    return head


def _too_long(keyword: str, max_words: int) -> bool:
    return len(keyword.split()) > max_words or len(keyword) > MAX_KEYWORD_CHARS


def _is_chatter(keyword: str) -> bool:
    return any(word.strip(".,!?'\"") in _CHATTER for word in keyword.split())
