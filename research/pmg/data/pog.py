"""POG (Alibaba iFashion), as released by its authors, -> canonical samples.

Raw files, comma-separated, no header, UTF-8 (Chinese titles), one record per line:

- ``item_data.txt``   ``item_id,cate_id,pic_url,title``. Titles may contain commas, so a line is split on its
  first three commas only (the official PMG code split on every comma and cut such titles short).
- ``outfit_data.txt`` ``outfit_id,item_id;item_id;...``
- ``user_data.txt``   ``user_id,item_id;item_id;...,outfit_id``: the items the user clicked, assumed oldest first
  (the official code also takes the last ones as the most recent), and an outfit the user clicked.
- images: ``<images>/<item_id>.jpg`` (or .jpeg/.png/.webp), downloaded from ``pic_url`` by the user.

One sample per ``user_data.txt`` line. History: the last N distinct clicked items that have a usable image.
Target: one item of the line's outfit that has a usable image and is not in the history, drawn with
``random.Random(f"{seed}:{user_id}:{line}")`` — a seeded choice independent of every other line (the
official code drew it unseeded and could pick a history item). POG has no timestamps, so users are split
with :func:`research.pmg.data.sampling.hashed_split`. Only outfits and items that users reference are
checked, so problems elsewhere in the (large) released files are not reported.
"""
from __future__ import annotations

import random
from pathlib import Path

from research.pmg.config.data import DataConfig
from research.pmg.data.images import open_images, verify_images
from research.pmg.data.lines import read_lines
from research.pmg.data.report import Report
from research.pmg.data.sampling import ReadResult, hashed_split, recent_distinct
from research.pmg.records.samples import ID_PATTERN, Item, Sample

ITEM_FILE, OUTFIT_FILE, USER_FILE = "item_data.txt", "outfit_data.txt", "user_data.txt"


def read_pog(raw: Path, images: Path, cfg: DataConfig, report: Report, progress: bool) -> ReadResult:
    history_len, min_history = cfg.resolved_history_len("pog"), cfg.resolved_min_history("pog")
    item_rows = _read_items(raw / ITEM_FILE, report, progress)
    outfits = _read_outfits(raw / OUTFIT_FILE, report, progress)
    user_file = str(raw / USER_FILE)

    lines = []  # (line number, user id, clicked item ids, outfit id)
    users: dict[str, None] = {}
    for number, text in read_lines(raw / USER_FILE, report, progress=progress):
        fields = text.split(",")
        if len(fields) != 3:
            report.issue(user_file, number, "malformed_row",
                         f"expected user_id,item_id;item_id;...,outfit_id (3 fields), got {len(fields)}")
            continue
        user_id, clicked, outfit_id = (f.strip() for f in fields)
        if not user_id or any(c.isspace() for c in user_id):
            report.issue(user_file, number, "malformed_row", f"bad user id {user_id!r}")
            continue
        if cfg.max_users and user_id not in users and len(users) >= cfg.max_users:
            continue
        users.setdefault(user_id, None)
        clicks = [i.strip() for i in clicked.split(";") if i.strip()]
        if not clicks:
            report.issue(user_file, number, "empty_history", f"user {user_id} has no clicked items")
            continue
        if outfit_id not in outfits:
            report.issue(user_file, number, "unknown_id", f"outfit {outfit_id!r} is not in {OUTFIT_FILE}")
            continue
        known = []
        for item_id in clicks:
            if item_id in item_rows:
                known.append(item_id)
            else:
                report.issue(user_file, number, "unknown_id", f"item {item_id!r} is not in {ITEM_FILE}")
        lines.append((number, user_id, known, outfit_id))

    # Unknown ids inside an outfit are reported once, where the outfit is defined, when a user first uses it.
    outfit_items: dict[str, list[str]] = {}
    for _, _, _, outfit_id in lines:
        if outfit_id not in outfit_items:
            outfit_line, members = outfits[outfit_id]
            outfit_items[outfit_id] = []
            for item_id in members:
                if item_id in item_rows:
                    outfit_items[outfit_id].append(item_id)
                else:
                    report.issue(str(raw / OUTFIT_FILE), outfit_line, "unknown_id",
                                 f"outfit {outfit_id}: item {item_id!r} is not in {ITEM_FILE}")

    wanted = {i for _, _, known, outfit_id in lines for i in (*known, *outfit_items[outfit_id])}
    usable = verify_images(open_images(images, cfg.allow_pickle),
                           {i: (str(raw / ITEM_FILE), item_rows[i][0]) for i in wanted}, report, progress)

    samples: list[Sample] = []
    per_user: dict[str, int] = {}
    for number, user_id, known, outfit_id in lines:
        clicks = [i for i in known if i in usable]
        history = recent_distinct(clicks, len(clicks), history_len, exclude=None)
        if len(history) < max(1, min_history):
            report.skip("short_history")
            continue
        candidates = list(dict.fromkeys(i for i in outfit_items[outfit_id] if i in usable and i not in history))
        if not candidates:
            report.skip("no_target")
            continue
        target = random.Random(f"{cfg.seed}:{user_id}:{number}").choice(candidates)
        k = per_user.get(user_id, 0)
        per_user[user_id] = k + 1
        samples.append(Sample(id=f"{user_id}:{k}", user_id=user_id, history=tuple(history), target=target,
                              split=hashed_split(user_id, cfg.seed, cfg.valid_fraction, cfg.test_fraction)))

    used = {i for s in samples for i in (*s.history, s.target)}
    items = {}
    for item_id in sorted(used):
        _, cate_id, pic_url, title = item_rows[item_id]
        items[item_id] = Item(id=item_id, title=title, category=cate_id,
                              attributes={"pic_url": pic_url} if pic_url else {})
    return ReadResult(source_format="pog", items=items, images={i: usable[i] for i in used}, samples=samples)


def _read_items(path: Path, report: Report, progress: bool) -> dict[str, tuple[int, str, str, str]]:
    rows: dict[str, tuple[int, str, str, str]] = {}
    for number, text in read_lines(path, report, progress=progress):
        fields = text.split(",", 3)
        if len(fields) != 4:
            report.issue(str(path), number, "malformed_row",
                         f"expected item_id,cate_id,pic_url,title (4 fields), got {len(fields)}")
            continue
        item_id, cate_id, pic_url, title = (f.strip() for f in fields)
        if not ID_PATTERN.fullmatch(item_id):
            report.issue(str(path), number, "malformed_row", f"bad item id {item_id!r}")
            continue
        if item_id in rows:
            report.issue(str(path), number, "duplicate_id",
                         f"item {item_id} already defined on line {rows[item_id][0]}; keeping that one")
            continue
        rows[item_id] = (number, cate_id, pic_url, title)
    return rows


def _read_outfits(path: Path, report: Report, progress: bool) -> dict[str, tuple[int, list[str]]]:
    outfits: dict[str, tuple[int, list[str]]] = {}
    for number, text in read_lines(path, report, progress=progress):
        fields = text.split(",")
        if len(fields) != 2:
            report.issue(str(path), number, "malformed_row",
                         f"expected outfit_id,item_id;item_id;... (2 fields), got {len(fields)}")
            continue
        outfit_id, members = fields[0].strip(), [i.strip() for i in fields[1].split(";") if i.strip()]
        if not outfit_id or not members:
            report.issue(str(path), number, "malformed_row", "empty outfit id or item list")
            continue
        if outfit_id in outfits:
            report.issue(str(path), number, "duplicate_id",
                         f"outfit {outfit_id} already defined on line {outfits[outfit_id][0]}; keeping that one")
            continue
        outfits[outfit_id] = (number, members)
    return outfits
