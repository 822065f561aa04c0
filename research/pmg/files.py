"""Writing files so that a crash never leaves half of one: atomic files, staged folders, JSON lines.

Every stage writes through these, so a killed run leaves either the previous output or the new one.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from research.pmg.errors import DataError


# ---------------------------------------------------------------------------------------------------------------------
def to_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)


def read_jsonl(path: Path, error: type[Exception] = DataError, hint: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", object)`` for each non-empty line of a JSONL file.

    A missing file or a line that is not UTF-8 JSON raises ``error`` (one of the reader's own error classes),
    naming file and line; ``hint`` (what may have caused it) is appended to the line's message.
    """
    suffix = f" ({hint})" if hint else ""
    if not path.is_file():
        raise error(f"{path}: not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise error(f"{where}: not UTF-8 text{suffix}") from None
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON: {exc.msg} (column {exc.colno}){suffix}") from None


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
def staged_dir(out: str | os.PathLike, *, marker: str) -> Iterator[Path]:
    """Build a whole output folder beside ``out`` and swap it in only when everything was written.

    A crash leaves ``<out>.partial`` (removed by the next run) and the previous ``out`` untouched, never a
    folder with some files new and some old. Write files inside with :func:`write_synced` or
    :func:`write_atomic` so that their bytes are on disk before the folder is swapped in. ``out`` may be
    missing, empty, or a folder written this way before (it holds ``marker``); anything else is refused
    rather than deleted. Stages call it through :func:`research.pmg.ownership.staged`, whose marker is the
    project's ownership marker.
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
