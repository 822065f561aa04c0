"""Sticker scenario: chats and sticker-usage histories (JSONL) -> canonical samples.

The PMG paper evaluates on stickers sent in chats but released no such data, so this project defines the
raw format (:mod:`research.pmg.data.sticker_set` builds a real, offline instance of it from Twemoji):

- ``stickers.jsonl``, one sticker per line::

      {"id": "1f431", "caption": "cat face", "category": "cats", "keywords": ["cat"], "attributes": {"emoji": "🐱"}}

  ``id`` and ``caption`` are required; ``category``, ``keywords`` (list of strings) and ``attributes``
  (string values) are optional.
- ``conversations.jsonl``, one sticker use per line::

      {"user_id": "u01", "time": 17, "sticker": "1f431", "conversation": ["Guess who got a kitten?", "No way!"]}

  ``time`` is any number that orders a user's events; ``conversation`` (optional) holds the turns before the
  sticker, oldest first; the user sends the sticker right after the last one.
- images: ``<images>/<sticker id>.png`` (or .jpg/.jpeg/.webp).

Each use is a target; its history is the last N (5) distinct stickers the user sent strictly earlier,
without the target sticker itself (people resend favourites; a history containing the answer would leak
it). Samples keep the use's conversation and are split leave-last-out per user in time order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from research.pmg.config.data import DataConfig
from research.pmg.data.images import open_images, verify_images
from research.pmg.data.lines import read_lines
from research.pmg.data.report import Report
from research.pmg.data.sampling import Event, ReadResult, chronological_samples
from research.pmg.records.samples import ID_PATTERN, Item

STICKER_FILE, CONVERSATION_FILE = "stickers.jsonl", "conversations.jsonl"
_STICKER_FIELDS = {"id": True, "caption": True, "category": False, "keywords": False, "attributes": False}
_USE_FIELDS = {"user_id": True, "time": True, "sticker": True, "conversation": False}


def read_stickers(raw: Path, images: Path, cfg: DataConfig, report: Report, progress: bool) -> ReadResult:
    stickers = _read_sticker_list(raw / STICKER_FILE, report, progress)
    path = raw / CONVERSATION_FILE
    uses: dict[str, list[Event]] = {}
    for number, obj in _json_lines(path, report, progress):
        if not _fields_ok(obj, _USE_FIELDS, path, number, report):
            continue
        user_id, time, sticker = obj["user_id"], obj["time"], obj["sticker"]
        conversation = obj.get("conversation", [])
        problem = _first_problem(
            (isinstance(user_id, str) and bool(user_id.strip()), "'user_id' must be a non-empty string"),
            (isinstance(time, (int, float)) and not isinstance(time, bool) and time == time, "'time' must be a number"),
            (isinstance(sticker, str), "'sticker' must be a string"),
            (_is_str_list(conversation), "'conversation' must be a list of strings"))
        if problem:
            report.issue(str(path), number, "malformed_row", f"field {problem}")
            continue
        if sticker not in stickers:
            report.issue(str(path), number, "unknown_id", f"sticker {sticker!r} is not in {STICKER_FILE}")
            continue
        if cfg.max_users and user_id not in uses and len(uses) >= cfg.max_users:
            continue
        uses.setdefault(user_id, []).append(Event(time=float(time), order=number, item=sticker,
                                                  conversation=tuple(conversation)))

    wanted = {e.item for events in uses.values() for e in events}
    usable = verify_images(open_images(images, cfg.allow_pickle),
                           {s: (str(raw / STICKER_FILE), stickers[s][0]) for s in wanted}, report, progress)
    history_len, min_history = cfg.resolved_history_len("stickers"), cfg.resolved_min_history("stickers")
    samples = []
    for user_id, events in uses.items():
        samples += chronological_samples(user_id, [e for e in events if e.item in usable], history_len,
                                         min_history, report)
    used = sorted({i for s in samples for i in (*s.history, s.target)})
    return ReadResult(source_format="stickers-jsonl", items={s: stickers[s][1] for s in used},
                      images={s: usable[s] for s in used}, samples=samples)


def _read_sticker_list(path: Path, report: Report, progress: bool) -> dict[str, tuple[int, Item]]:
    stickers: dict[str, tuple[int, Item]] = {}
    for number, obj in _json_lines(path, report, progress):
        if not _fields_ok(obj, _STICKER_FIELDS, path, number, report):
            continue
        sticker_id, caption = obj["id"], obj["caption"]
        category, keywords, attributes = obj.get("category", ""), obj.get("keywords", []), obj.get("attributes", {})
        problem = _first_problem(
            (isinstance(sticker_id, str) and bool(ID_PATTERN.fullmatch(sticker_id)),
             f"'id' {sticker_id!r} is not a usable id (letters, digits, _ . -)"),
            (isinstance(caption, str), "'caption' must be a string"),
            (isinstance(category, str), "'category' must be a string"),
            (_is_str_list(keywords), "'keywords' must be a list of strings"),
            (isinstance(attributes, dict) and all(isinstance(v, str) for v in attributes.values()),
             "'attributes' must map names to strings"))
        if problem:
            report.issue(str(path), number, "malformed_row", f"field {problem}")
            continue
        if sticker_id in stickers:
            report.issue(str(path), number, "duplicate_id",
                         f"sticker {sticker_id} already defined on line {stickers[sticker_id][0]}; keeping that one")
            continue
        stickers[sticker_id] = (number, Item(id=sticker_id, title=caption.strip(), category=category,
                                             keywords=tuple(keywords), attributes=dict(attributes)))
    return stickers


def _json_lines(path: Path, report: Report, progress: bool):
    for number, text in read_lines(path, report, progress=progress):
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as exc:
            report.issue(str(path), number, "malformed_row", f"not valid JSON: {exc.msg} (column {exc.colno})")


def _fields_ok(obj: Any, fields: dict[str, bool], path: Path, number: int, report: Report) -> bool:
    if not isinstance(obj, dict):
        report.issue(str(path), number, "malformed_row", f"expected a JSON object, got {type(obj).__name__}")
        return False
    missing = [name for name, required in fields.items() if required and name not in obj]
    unknown = sorted(set(obj) - set(fields))
    if missing or unknown:
        what = f"missing field '{missing[0]}'" if missing else f"unknown field '{unknown[0]}'"
        report.issue(str(path), number, "malformed_row", f"{what} (fields: {', '.join(fields)})")
        return False
    return True


def _first_problem(*checks: tuple[bool, str]) -> str | None:
    return next((message for ok, message in checks if not ok), None)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
