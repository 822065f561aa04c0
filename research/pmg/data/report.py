"""Problems found in raw data: each one named with its file and line, counted, and fatal when strict.

Two kinds of events are kept apart. *Issues* are defects of the input (a malformed row, an unknown or
duplicate id, a missing or unreadable image, an empty history line): in strict mode the first one stops the
run, otherwise it is skipped, counted and listed in ``issues.txt``. *Skips* are normal properties of the data
that cost a sample (a user whose history is too short, an outfit with no usable item left): they are only
counted, never fatal, so that strict mode stays usable on real datasets.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from research.pmg.errors import DataError

ISSUE_KINDS = ("malformed_row", "unknown_id", "duplicate_id", "missing_image", "unreadable_image",
               "empty_history")


@dataclass(frozen=True)
class Issue:
    file: str
    line: int  # 1-based; 0 when the problem is not tied to a line
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.kind}: {self.message}"


class Report:
    """Collects issues and skips while a reader runs."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.issues: list[Issue] = []
        self.skipped: Counter[str] = Counter()

    def issue(self, file: str, line: int, kind: str, message: str) -> None:
        """Record a defect of the input; raise :class:`DataError` at once in strict mode."""
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown issue kind {kind!r}")
        found = Issue(str(file), line, kind, " ".join(message.split()))
        if self.strict:
            raise DataError(f"{found} (strict mode; with data.strict=false such rows are skipped and counted)")
        self.issues.append(found)

    def skip(self, reason: str, count: int = 1) -> None:
        """Count samples that the data cannot provide (not an input defect, never fatal)."""
        self.skipped[reason] += count

    def issue_counts(self) -> dict[str, int]:
        counts = Counter(i.kind for i in self.issues)
        return {kind: counts[kind] for kind in sorted(counts)}

    def skip_counts(self) -> dict[str, int]:
        return {reason: self.skipped[reason] for reason in sorted(self.skipped)}


def fatal(file: str, line: int, message: str) -> DataError:
    """An error that no mode can skip (missing file, wrong header): the whole input is unusable."""
    where = f"{file}:{line}" if line else str(file)
    return DataError(f"{where}: {' '.join(message.split())}")
