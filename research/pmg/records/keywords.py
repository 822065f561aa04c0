"""The keywords file: one JSON record per sample, read by training and generation with :func:`load_keywords`.

``keywords.jsonl`` (sorted keys, samples in dataset order, written atomically) holds per sample::

    id                    sample id, as in samples.jsonl
    user_id, target       the sample's user and target item id (a cross-check against the dataset)
    preference_keywords   k_p: at most keywords.num_preference normalised keywords
    target_keywords       k_t: at most keywords.num_target
    status                "ok"; "partial" (some answer was empty/unparseable, or the integrate pass failed);
                          "failed" (k_p or k_t is empty)
    preference_detail     how k_p was made: {"answers": [...], "merged": [...], "integrate": {...} or null}
    target_detail         the same for k_t

Each answer is ``{"attribute", "raw" (the LLM's text), "keywords" (parsed), "rejected" (pieces that were not
keywords), "status" ("ok", "none", "empty", "unparseable")}``, plus ``history_used``/``turns_used`` for
preference answers (history items and conversation turns that fitted the context). ``merged`` is the
de-duplicated union in priority order, before the cap. ``integrate`` is ``{"raw", "keywords", "status",
"dropped"}`` when the integrate pass ran.

``keywords.summary.json`` beside it (written after it) records the format version, model id, prompt set,
settings and counts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.pmg.errors import PMGError
from research.pmg.files import read_jsonl

FORMAT_VERSION = 1
SAMPLE_STATUSES = ("ok", "partial", "failed")


class KeywordsFileError(PMGError, ValueError):
    """A keywords file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class SampleKeywords:
    """What later stages need of one sample's keywords."""

    id: str
    user_id: str
    target: str
    preference_keywords: tuple[str, ...]
    target_keywords: tuple[str, ...]
    status: str


def summary_path(path: str | os.PathLike) -> Path:
    """``.../keywords.jsonl`` -> ``.../keywords.summary.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.summary.json")


def load_keywords(path: str | os.PathLike) -> dict[str, SampleKeywords]:
    """Read a keywords file into ``{sample id: SampleKeywords}`` (file order), checking every record.

    ``path`` is the ``.jsonl`` file or a folder holding ``keywords.jsonl``. If the summary file is present,
    its format version must be this code's. Raises :class:`KeywordsFileError` naming file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "keywords.jsonl"
    if not path.is_file():
        raise KeywordsFileError(f"{path}: keywords file not found (run python -m research.pmg.keywords)")
    summary = summary_path(path)
    if summary.is_file():
        try:
            version = json.loads(summary.read_text(encoding="utf-8")).get("format_version")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise KeywordsFileError(f"{summary}: not a keywords summary: {exc}") from None
        if version != FORMAT_VERSION:
            raise KeywordsFileError(f"{summary}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    out: dict[str, SampleKeywords] = {}
    for where, record in read_jsonl(path, KeywordsFileError):
        entry = _entry(record, where)
        if entry.id in out:
            raise KeywordsFileError(f"{where}: sample {entry.id!r} appears twice")
        out[entry.id] = entry
    return out


def _entry(record: Any, where: str) -> SampleKeywords:
    if not isinstance(record, dict):
        raise KeywordsFileError(f"{where}: expected a JSON object")
    for key in ("id", "user_id", "target", "status"):
        if not isinstance(record.get(key), str):
            raise KeywordsFileError(f"{where}: field '{key}' must be a string")
    if record["status"] not in SAMPLE_STATUSES:
        raise KeywordsFileError(f"{where}: field 'status' = {record['status']!r}; expected one of "
                                f"{list(SAMPLE_STATUSES)}")
    lists = {}
    for key in ("preference_keywords", "target_keywords"):
        value = record.get(key)
        if not isinstance(value, list) or not all(isinstance(k, str) and k for k in value):
            raise KeywordsFileError(f"{where}: field '{key}' must be a list of non-empty strings")
        lists[key] = tuple(value)
    return SampleKeywords(id=record["id"], user_id=record["user_id"], target=record["target"],
                          status=record["status"], **lists)
