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
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from research.pmg.data.report import DataError

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
# JSONL and atomic writes
# ---------------------------------------------------------------------------------------------------------------------
def to_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", object)`` for each non-empty line of a JSONL file."""
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text") from None
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write a whole file or nothing: temp file in the same folder, fsync, rename over the target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write and fsync a file inside a :func:`staged_dir` folder (whose swap is the atomic step)."""
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _named(exc, path) from None


def _named(exc: OSError, path: str | os.PathLike) -> OSError:
    """A failed write (full disk, file size limit) names no file: name the one being written."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, f"{exc.strerror} while writing", str(path))


@contextmanager
def staged_dir(out: str | os.PathLike, marker: str = SUMMARY_FILE) -> Iterator[Path]:
    """Build a whole output folder beside ``out`` and swap it in only when everything was written.

    A crash leaves ``<out>.partial`` (removed by the next run) and the previous ``out`` untouched, never a
    folder with some files new and some old. Write files inside with :func:`write_synced` or
    :func:`write_atomic` so that their bytes are on disk before the folder is swapped in. ``out`` may be
    missing, empty, or a folder written this way before (it holds ``marker``); anything else is refused
    rather than deleted.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise DataError(f"{out}: exists, is not empty and holds no {marker}; refusing to replace it "
                            "(choose an empty or new output folder)")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for folder in sorted({p.parent for p in staging.rglob("*")}):
        _fsync_dir(folder)  # file contents are synced as written; make their names durable before the swap
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
