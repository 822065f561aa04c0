"""Cutting interaction sequences into samples and samples into splits, the same way for every scenario.

- :func:`chronological_samples` (MovieLens, stickers): every interaction is a target; its history is the
  last N *distinct* items the user interacted with strictly before it (ties in time are not "before"),
  never including the target itself.
- :func:`leave_last_out`: per user, the latest sample is ``test``, the one before it ``valid``, the rest
  ``train``; users with fewer than three samples go entirely to ``train`` (too little to hold out).
- :func:`hashed_split` (POG, which has no timestamps): a user's split is a pure function of the seed and
  the user id, so adding or removing other users never moves anyone.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from research.pmg.data.images import ImageRef
from research.pmg.data.report import Report
from research.pmg.records.samples import Item, Sample


@dataclass
class ReadResult:
    """What a scenario reader hands to the prepare stage.

    ``items`` holds every item a sample names (``image`` still empty: prepare fills it when copying);
    ``images`` maps each of those ids to its verified image and the file extension of its format.
    """

    source_format: str
    items: dict[str, Item]
    images: dict[str, tuple[ImageRef, str]]
    samples: list[Sample]


@dataclass(frozen=True)
class Event:
    """One interaction: ``order`` breaks ties in ``time`` (the raw file's line number)."""

    time: float
    order: int
    item: str
    conversation: tuple[str, ...] = ()


def recent_distinct(items: list[str], end: int, history_len: int, exclude: str | None) -> list[str]:
    """The last ``history_len`` distinct entries of ``items[:end]`` other than ``exclude``, oldest first."""
    picked: list[str] = []
    seen = {exclude} if exclude is not None else set()
    for index in range(end - 1, -1, -1):
        item = items[index]
        if item not in seen:
            seen.add(item)
            picked.append(item)
            if len(picked) == history_len:
                break
    return picked[::-1]


def chronological_samples(user_id: str, events: list[Event], history_len: int, min_history: int,
                          report: Report) -> list[Sample]:
    """Samples for one user from events in any order; split by :func:`leave_last_out`."""
    events = sorted(events, key=lambda e: (e.time, e.order))
    times = [e.time for e in events]
    items = [e.item for e in events]
    cases = []
    for index, event in enumerate(events):
        earlier = bisect.bisect_left(times, event.time, hi=index)  # events strictly before this one in time
        history = recent_distinct(items, earlier, history_len, exclude=event.item)
        if len(history) < max(1, min_history):
            report.skip("short_history")
            continue
        cases.append((tuple(history), event))
    splits = leave_last_out(len(cases))
    return [Sample(id=f"{user_id}:{k}", user_id=user_id, history=history, target=event.item, split=split,
                   conversation=event.conversation)
            for k, ((history, event), split) in enumerate(zip(cases, splits))]


def leave_last_out(count: int) -> list[str]:
    """Split names for a user's ``count`` samples in time order."""
    if count < 3:
        return ["train"] * count
    return ["train"] * (count - 2) + ["valid", "test"]


def hashed_split(user_id: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """``train``/``valid``/``test`` for a user, from a SHA-256 of seed and id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{user_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"
