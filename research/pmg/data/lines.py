"""Reading raw text files line by line with line numbers, so every problem can be named ``file:line``."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from research.pmg.data.report import Report, fatal


def read_lines(path: Path, report: Report, *, encoding: str = "utf-8", progress: bool = False
               ) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each non-blank line, without its line ending.

    A UTF-8 byte-order mark is dropped; a line that does not decode is reported as malformed and skipped
    (one bad byte must not cost the whole file). A missing file is fatal.
    """
    if not path.is_file():
        raise fatal(str(path), 0, "file not found")
    bar = tqdm(total=path.stat().st_size, desc=path.name, unit="B", unit_scale=True, leave=False,
               disable=None if progress else True)  # None: draw only on a terminal, never into log files
    pending = 0
    with open(path, "rb") as handle, bar:
        for number, raw in enumerate(handle, start=1):
            pending += len(raw)
            if pending > 1 << 20:
                bar.update(pending)
                pending = 0
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                report.issue(str(path), number, "malformed_row",
                             f"not {encoding} text ({exc.reason} at byte {exc.start})")
                continue
            if text.strip():
                yield number, text
        bar.update(pending)


def split_csv(text: str) -> list[str]:
    """One CSV line into fields (RFC 4180 quoting, as MovieLens writes titles such as ``"Heat, The (1995)"``)."""
    if '"' not in text:
        return text.split(",")
    return next(csv.reader([text]))
