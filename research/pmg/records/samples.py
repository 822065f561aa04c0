"""The canonical records every later stage reads, and their on-disk form.

A prepared dataset is one folder::

    items.jsonl     one Item per line, sorted by id, numbers numerically (only items that some sample uses)
    samples.jsonl   one Sample per line: users in raw-file order, each user's samples in time order
    images/         <item id>.<ext>: the original image bytes, verified by decoding (pickled arrays: PNG)
    issues.txt      every defect found in the raw input, "file:line: kind: message"
    summary.json    format version, counts, settings; written last, so its presence marks a complete folder

JSON lines have sorted keys and UTF-8 text, so equal inputs give byte-identical files. Use
:func:`load_prepared` to read a folder: it checks the format version and that every id a sample names exists.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research.pmg.errors import DataError
from research.pmg.files import read_jsonl

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
ITEMS_FILE, SAMPLES_FILE, SUMMARY_FILE, ISSUES_FILE, IMAGES_DIR = (
    "items.jsonl", "samples.jsonl", "summary.json", "issues.txt", "images")
# Ids become file names (images/<id>.jpg): no separators, no leading dot.
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def id_sort_key(item_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order ("2" before "10"), then the others as text: a stable, readable order."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


@dataclass(frozen=True)
class Item:
    """One thing a user interacted with: a garment, a movie, a sticker.

    ``image`` is relative to the dataset folder (``images/123.jpg``); text fields feed the keyword prompts.
    """

    id: str
    title: str
    image: str = ""
    category: str = ""  # POG cate_id, sticker theme
    genres: tuple[str, ...] = ()  # MovieLens genres
    keywords: tuple[str, ...] = ()  # tags given by the raw data (stickers)
    attributes: dict[str, str] = field(default_factory=dict)  # everything else, e.g. year, imdb_id, pic_url

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "image": self.image, "category": self.category,
                "genres": list(self.genres), "keywords": list(self.keywords),
                "attributes": dict(sorted(self.attributes.items()))}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Item:
        _expect_keys(obj, ("id", "title", "image", "category", "genres", "keywords", "attributes"), where)
        attributes = obj["attributes"]
        if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
            raise DataError(f"{where}: field 'attributes' must map names to strings")
        return cls(id=_str(obj, "id", where), title=_str(obj, "title", where), image=_str(obj, "image", where),
                   category=_str(obj, "category", where), genres=_str_list(obj, "genres", where),
                   keywords=_str_list(obj, "keywords", where), attributes=dict(attributes))


@dataclass(frozen=True)
class Sample:
    """One training/evaluation case: a user's history (oldest first) and the target item that follows it.

    ``conversation`` holds chat turns, oldest first, for the sticker scenario (the sticker is sent right after
    the last turn); it is empty elsewhere. The target never appears in its own history.
    """

    id: str  # "<user_id>:<k>", k counting the user's samples in time order
    user_id: str
    history: tuple[str, ...]
    target: str
    split: str  # "train", "valid" or "test"
    conversation: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "user_id": self.user_id, "history": list(self.history), "target": self.target,
                "split": self.split, "conversation": list(self.conversation)}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Sample:
        _expect_keys(obj, ("id", "user_id", "history", "target", "split", "conversation"), where)
        split = _str(obj, "split", where)
        if split not in SPLITS:
            raise DataError(f"{where}: field 'split' = {split!r}; expected one of {list(SPLITS)}")
        return cls(id=_str(obj, "id", where), user_id=_str(obj, "user_id", where),
                   history=_str_list(obj, "history", where), target=_str(obj, "target", where), split=split,
                   conversation=_str_list(obj, "conversation", where))


@dataclass
class PreparedData:
    """A prepared dataset folder, loaded."""

    root: Path
    items: dict[str, Item]
    samples: list[Sample]
    summary: dict[str, Any]

    def split(self, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [s for s in self.samples if s.split == name]

    def image_path(self, item_id: str) -> Path:
        return self.root / self.items[item_id].image


def load_prepared(root: str | os.PathLike) -> PreparedData:
    """Read a folder written by the prepare stage; raise :class:`DataError` naming file and line if it is wrong."""
    root = Path(root)
    summary_path = root / SUMMARY_FILE
    if not summary_path.is_file():
        raise DataError(f"{summary_path}: not found; {root} is not a prepared dataset (run the prepare stage)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{summary_path}: not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or summary.get("format_version") != FORMAT_VERSION:
        version = summary.get("format_version") if isinstance(summary, dict) else None
        raise DataError(f"{summary_path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
    items: dict[str, Item] = {}
    for where, obj in read_jsonl(root / ITEMS_FILE):
        item = Item.from_json(obj, where)
        if item.id in items:
            raise DataError(f"{where}: duplicate item id {item.id!r}")
        if not item.image or not (root / item.image).is_file():
            raise DataError(f"{where}: item {item.id!r}: image {item.image!r} not found under {root}")
        items[item.id] = item
    samples, seen = [], set()
    for where, obj in read_jsonl(root / SAMPLES_FILE):
        sample = Sample.from_json(obj, where)
        if sample.id in seen:
            raise DataError(f"{where}: duplicate sample id {sample.id!r}")
        seen.add(sample.id)
        for item_id in (*sample.history, sample.target):
            if item_id not in items:
                raise DataError(f"{where}: sample {sample.id!r} names unknown item {item_id!r}")
        samples.append(sample)
    return PreparedData(root=root, items=items, samples=samples, summary=summary)


# ---------------------------------------------------------------------------------------------------------------------
# Field checks for the readers of JSON records
# ---------------------------------------------------------------------------------------------------------------------
def _expect_keys(obj: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{where}: missing field '{missing[0]}'")
    unknown = sorted(set(obj) - set(keys))
    if unknown:
        raise DataError(f"{where}: unknown field '{unknown[0]}'")


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {value!r}")
    return value


def _str_list(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field '{key}' must be a list of strings")
    return tuple(value)
