"""Which folders are the project's, and the lock that keeps two runs out of one: the rule every stage command and
the pipeline follow before they write into, replace or move a folder.

A folder is the project's when it holds ``.pmg-owned``, a small JSON file the project writes when it creates the
folder (or first writes into an empty one), naming the stage whose outputs it holds. The project writes into,
replaces or moves a folder only when it is absent, empty, or marked by that same stage; anything else (a user's
folder, another stage's) is refused with one error naming it, and nothing in it is touched. The marker moves
with its folder (``generate.stale-<key>`` stays the project's) and is a hidden name, so output checksums skip it.

Files the project replaces (the keywords file, the pipeline's report) follow the same rule through the record it
writes with them (:func:`check_file`).

Locks are ``fcntl.flock`` locks on a file, held while a run works and released by the OS when its process dies,
so a killed run never blocks the next one. A second run fails at once, naming the first's pid. The lock file
sits where the stage writes anyway: inside a folder written in place (``<folder>/.pmg-lock``: generate, train,
the pipeline's state folder), beside a folder replaced whole (``.<name>.lock``: prepare, evaluate), since that one
is renamed over and a lock must stay on one file. (The keyword cache locks each worker's part file itself.)
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

from research.pmg.errors import PMGError
from research.pmg.files import staged_dir, write_atomic

MARKER = ".pmg-owned"
LOCK = ".pmg-lock"
PROJECT = "pmg-mindspore"
# What a run leaves in a folder it has only just claimed (the marker's temporary name is write_atomic's): these alone
# do not make a folder "not empty".
_BOOKKEEPING = (MARKER, LOCK, f".{MARKER}.tmp-")


class OwnershipError(PMGError):
    """A folder the project was asked to write into, replace or move is not the project's (or not this stage's)."""


class InUseError(PMGError):
    """Another run holds the folder's lock."""


def owner(folder: Path) -> str | None:
    """The stage named by ``folder``'s marker, or None when there is no valid marker."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(record, dict) and record.get("project") == PROJECT and isinstance(record.get("stage"), str):
        return record["stage"]
    return None


def _foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` other than the project's bookkeeping (marker, lock, the marker's temporary file)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith(_BOOKKEEPING))


def check(folder: str | os.PathLike, stage: str) -> None:
    """Raise :class:`OwnershipError` unless ``stage`` may write into ``folder``: absent, empty or marked by ``stage``.

    Read-only: stages call it first, before loading anything, to fail fast.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OwnershipError(f"{folder}: exists and is not a folder; choose another output location")
    found = owner(folder)
    if found == stage:
        return
    if found is not None:
        raise OwnershipError(f"{folder}: holds the outputs of the {found} stage, not of {stage}; choose another "
                             "output folder")
    foreign = _foreign_entries(folder)
    if foreign:
        raise OwnershipError(f"{folder}: exists, is not empty (e.g. {foreign[0]}) and was not made by this project "
                             f"(no {MARKER}); refusing to write into, replace or move it: choose a new or empty "
                             "folder, or move it away")


def mark(folder: Path, stage: str) -> None:
    """Write ``folder``'s marker naming ``stage`` (once; the content is the same for every run, so outputs compare
    byte for byte)."""
    path = Path(folder) / MARKER
    if owner(folder) != stage:
        write_atomic(path, json.dumps({"project": PROJECT, "stage": stage,
                                       "note": "made by this project; it writes into, replaces or moves this folder "
                                               "only while this file is here"}, indent=1) + "\n")


def adopt(folder: str | os.PathLike, stage: str) -> Path:
    """Make ``folder`` ``stage``'s without a lock: checked (:func:`check`), created and marked. For folders several
    runs write into side by side, such as the log and cache folders of the runtime."""
    folder = Path(folder)
    check(folder, stage)
    folder.mkdir(parents=True, exist_ok=True)
    mark(folder, stage)
    return folder


@contextlib.contextmanager
def claim(folder: str | os.PathLike, stage: str, *, lock: bool = True) -> Iterator[Path]:
    """Make ``folder`` ``stage``'s working folder for the duration: checked (:func:`check`), created, locked
    (``lock=False`` for msrun workers other than rank 0, which share their rank 0's run) and marked."""
    folder = Path(folder)
    check(folder, stage)
    folder.mkdir(parents=True, exist_ok=True)
    with (hold(folder / LOCK, folder) if lock else contextlib.nullcontext()):
        check(folder, stage)  # again under the lock: another run may have written in between
        mark(folder, stage)
        yield folder


@contextlib.contextmanager
def staged(out: str | os.PathLike, stage: str) -> Iterator[Path]:
    """:func:`~research.pmg.records.samples.staged_dir` for ``stage``'s folder ``out``, under its lock: ``out`` and the
    scratch folders beside it (``.partial``, ``.old``) are checked first, the new folder carries the marker."""
    out = Path(out)
    check(out, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    with hold(sibling_lock(out), out):
        for path in (out, out.with_name(out.name + ".partial"), out.with_name(out.name + ".old")):  # staged_dir's
            check(path, stage)
        with staged_dir(out, marker=MARKER) as staging:
            mark(staging, stage)
            yield staging


def check_file(path: str | os.PathLike, record: str | os.PathLike) -> None:
    """A file the project replaces must be absent or have its ``record``: the summary or stamp the project writes
    with it (the keywords file's summary beside it, the report's stamp). Anything else is someone else's file."""
    path, record = Path(path), Path(record)
    if path.exists() and not path.is_file():
        raise OwnershipError(f"{path}: exists and is not a file; choose another output location")
    if path.exists() and not record.is_file():
        raise OwnershipError(f"{path}: exists and was not written by this project (no {record} records it); "
                             "refusing to replace it: choose another output file, or move it away")


def sibling_lock(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def hold(lock_file: Path, what: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if needed) for the run working on ``what``; a second run
    fails at once with :class:`InUseError` naming the holder's pid. The file is removed on release."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise InUseError(f"{what}: in use by another run (pid {holder if holder.isdigit() else 'unknown'}); wait "
                             "for it to finish, or stop it") from None
        try:  # the holder before may have removed the file between our open and our lock: lock the current file
            current = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # while still locked: a run that opened it before retries on a fresh file
        os.close(fd)
