"""What a caller asks PMG for: a history, a target and (stickers) a conversation, checked before any model runs.

A history entry or a target is either the id of an item of the prepared dataset (``"1193"``) or a free item: a
mapping with a ``title`` (a movie title, a garment's or a sticker's caption) and an ``image`` path, optionally
``genres``, ``keywords``, ``category`` and ``attributes`` (the fields of
:class:`research.pmg.records.samples.Item` that the keyword prompts read). Every problem is one
:class:`RequestError` naming the entry (``history[2]``, ``target``) and, for a request file, the file.

A request file is JSON::

    {"history": ["1193", {"title": "My cat", "image": "cat.png"}], "target": "2355",
     "conversation": ["good morning!"], "n": 2}

where relative image paths are relative to the file's folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from research.pmg.errors import PMGError, short_repr
from research.pmg.images import load_rgb
from research.pmg.records.samples import Item

MAX_HISTORY = 1000  # a history longer than this is a mistake, not a user
MAX_TEXT = 2000  # characters of a title, keyword or conversation turn
FREE_FIELDS = ("title", "image", "genres", "keywords", "category", "attributes")
REQUEST_FIELDS = ("history", "target", "conversation", "n")


class RequestError(PMGError, ValueError):
    """A request PMG cannot serve: an unknown item id, a free item without a title or a readable image, ..."""


@dataclass(frozen=True)
class FreeItem:
    """An item that is not in the prepared dataset: what the keyword prompts and the history prompt read."""

    title: str
    image: Union[str, Path]
    genres: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    category: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


Entry = Union[str, Mapping[str, Any], FreeItem]  # an item id, a free item as a mapping, or a FreeItem


@dataclass(frozen=True)
class Request:
    """A request file, read: its entries still unresolved (ids are checked against the dataset later)."""

    history: list[Entry]
    target: Entry
    conversation: tuple[str, ...] = ()
    n: int | None = None


def resolve(entry: Entry, items: Mapping[str, Item], where: str, *, base: Path | None = None,
            free_id: str) -> tuple[Item, Path | None]:
    """``(item, image path)`` of one entry; an id's image path is None (the dataset knows it).

    ``free_id`` is the id a free item gets; ``base`` is the folder relative image paths start from.
    """
    if isinstance(entry, str):
        if entry not in items:
            known = f"not among the {len(items)} items of the prepared dataset" if items else "no prepared dataset"
            raise RequestError(f"{where}: unknown item id {short_repr(entry)} ({known})")
        return items[entry], None
    if isinstance(entry, FreeItem):
        entry = {name: getattr(entry, name) for name in FREE_FIELDS}
    if not isinstance(entry, Mapping):
        raise RequestError(f"{where}: must be an item id or a free item {{title, image}}, got "
                           f"{type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in FREE_FIELDS)
    if unknown:
        raise RequestError(f"{where}: unknown field {short_repr(unknown[0])} (a free item has {list(FREE_FIELDS)})")
    title = _text(entry.get("title"), f"{where}.title")
    if not title.strip():
        raise RequestError(f"{where}.title: must not be empty")
    image = entry.get("image")
    if not isinstance(image, (str, os.PathLike)) or not str(image):
        raise RequestError(f"{where}.image: must be the path of an image file")
    path = Path(image)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise RequestError(f"{where}.image: {path}: no such file")
    try:
        load_rgb(path)  # decoded now, not halfway through a generation
    except PMGError as exc:
        raise RequestError(f"{where}.image: {exc}") from None
    attributes = entry.get("attributes") or {}
    if not isinstance(attributes, Mapping):
        raise RequestError(f"{where}.attributes: must map names to strings")
    item = Item(id=free_id, title=title, image=str(path.resolve()),
                category=_text(entry.get("category") or "", f"{where}.category"),
                genres=_texts(entry.get("genres") or (), f"{where}.genres"),
                keywords=_texts(entry.get("keywords") or (), f"{where}.keywords"),
                attributes={_text(k, f"{where}.attributes"): _text(v, f"{where}.attributes.{k}")
                            for k, v in attributes.items()})
    return item, path.resolve()


def check_history(history: Any, where: str = "history") -> list[Entry]:
    """The history as a list of entries: at least one, at most :data:`MAX_HISTORY`."""
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise RequestError(f"{where}: must be a list of items (ids or free items), got {type(history).__name__}")
    if not history:
        raise RequestError(f"{where}: is empty; PMG personalizes from at least one item the user liked")
    if len(history) > MAX_HISTORY:
        raise RequestError(f"{where}: {len(history)} items, more than {MAX_HISTORY}")
    return list(history)


def check_conversation(conversation: Any, where: str = "conversation") -> tuple[str, ...]:
    if conversation is None:
        return ()
    return _texts(conversation, where)


def check_n(n: Any, where: str = "n") -> int | None:
    """Images per weight set: None (the config's) or a whole number in [1, 64]."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
        raise RequestError(f"{where}: must be a whole number from 1 to 64, got {short_repr(n)}")
    return n


def check_fields(raw: Any, where: str) -> None:
    """A request as parsed JSON: an object with only REQUEST_FIELDS, history and target among them."""
    if not isinstance(raw, dict):
        raise RequestError(f"{where}: must be a JSON object with {list(REQUEST_FIELDS)}, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in REQUEST_FIELDS)
    if unknown:
        raise RequestError(f"{where}: unknown field {short_repr(unknown[0])} (a request has {list(REQUEST_FIELDS)})")
    for name in ("history", "target"):
        if name not in raw:
            raise RequestError(f"{where}: missing field {name!r}")


def load_request(path: str | os.PathLike) -> tuple[Request, Path]:
    """A request file -> ``(request, folder its relative image paths start from)``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RequestError(f"{path}: no such request file") from None
    except UnicodeDecodeError:
        raise RequestError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except OSError as exc:
        raise RequestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    where = str(path)
    check_fields(raw, where)
    return Request(history=check_history(raw["history"], f"{where}: history"), target=raw["target"],
                   conversation=check_conversation(raw.get("conversation"), f"{where}: conversation"),
                   n=check_n(raw.get("n"), f"{where}: n")), path.resolve().parent


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{where}: must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise RequestError(f"{where}: {len(value)} characters, more than {MAX_TEXT}")
    return value


def _texts(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RequestError(f"{where}: must be a list of texts, got {type(value).__name__}")
    return tuple(_text(v, f"{where}[{i}]") for i, v in enumerate(value))
