"""The persistent answer cache: every LLM answer, keyed by (model id, template set version, rendered prompt).

A cache is a folder of JSONL files, one per writer: ``part-<rank>.jsonl``. Every process reads all parts
(so a run resumes whatever the number of workers before) and appends to its own, holding an exclusive lock
on it (a second run on the same part fails instead of interleaving lines). Each batch of answers is
appended as whole lines, flushed and fsynced before the next batch starts, so a killed run loses at most
the batch in flight. A crash can leave a torn last line: it is ignored on reading and cut off before the
next append. Answers are stored raw; parsing happens on every run, so parser changes need no new LLM calls.

Line format: ``{"key": <sha256 hex>, "model": <model id>, "template": <set@vN>, "text": <raw answer>,
"sum": <sha256 of text, 16 hex>}``; a line whose text fails its sum counts as torn (older lines have no sum).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from research.pmg.errors import PMGError


class CacheError(PMGError):
    """The cache folder cannot be used (locked by another run, not a folder, unreadable)."""


def cache_key(model_id: str, template_id: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([model_id, template_id, prompt], ensure_ascii=False).encode()).hexdigest()


def text_sum(text: str) -> str:
    """The checksum stored with each answer, so a damaged line is dropped (and regenerated) instead of used."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class AnswerCache:
    """Answers by key, loaded from every part of ``folder``; :meth:`put_many` appends to part ``rank`` (a worker's
    rank, or a name such as ``api`` for a writer that is no worker of a stage run)."""

    def __init__(self, folder: str | os.PathLike, rank: int | str = 0):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise CacheError(f"{self.folder}: the keyword cache must be a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"part-{rank}.jsonl"
        self._handle = open(self.path, "a+b")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.close()
            raise CacheError(f"{self.path}: in use by another keyword run (one run per cache folder and rank)") \
                from None
        self.answers: dict[str, str] = {}
        self.torn_lines = 0  # unreadable lines skipped: a crash's torn last line, or damage
        for part in sorted(self.folder.glob("part-*.jsonl")):
            self._load(part)
        self._cut_torn_tail()

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put_many(self, entries: Iterable[tuple[str, str, str, str]]) -> None:
        """Append ``(key, model_id, template_id, text)`` entries as one durable write."""
        lines = []
        for key, model_id, template_id, text in entries:
            self.answers[key] = text
            lines.append(json.dumps({"key": key, "model": model_id, "template": template_id, "text": text,
                                     "sum": text_sum(text)}, sort_keys=True, ensure_ascii=False) + "\n")
        if lines:
            self._handle.write("".join(lines).encode("utf-8"))
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _load(self, part: Path) -> None:
        with open(part, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):  # torn: the write of this line never finished
                    self.torn_lines += 1
                    continue
                try:
                    entry = json.loads(raw.decode("utf-8"))
                    key, text = entry["key"], entry["text"]
                    if not isinstance(key, str) or not isinstance(text, str):
                        raise TypeError
                    if "sum" in entry and entry["sum"] != text_sum(text):  # damaged: asked again, never used
                        raise TypeError
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    self.torn_lines += 1
                    continue
                self.answers[key] = text

    def _cut_torn_tail(self) -> None:
        """Drop a last line without its newline from our part, so the next append starts on a fresh line."""
        self._handle.seek(0, os.SEEK_END)
        size = self._handle.tell()
        if size == 0:
            return
        self._handle.seek(size - 1)
        if self._handle.read(1) == b"\n":
            return
        self._handle.seek(0)
        data = self._handle.read()
        self._handle.truncate(data.rfind(b"\n") + 1)
        self._handle.flush()
        os.fsync(self._handle.fileno())
