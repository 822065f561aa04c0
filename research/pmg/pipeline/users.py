"""The report's "simulated users" figure: for a cat lover, a heart lover, a food lover, ... side by side the
history, the target, the non-personalized image and the PMG image, so a reader sees what personalization did.

A "<theme> lover" is the first held-out sample (evaluation split, dataset order) whose history holds the most
stickers of that theme (at least ``min_share`` of it): the simulated users of the sticker world have one or two
favourite themes, so their histories show them. Nothing is recomputed: the images are the evaluation stage's
(its ``summary.json`` names where each method's images came from) and the keywords are the keyword stage's.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, ImageDraw

from research.pmg.evaluate.methods import read_images
from research.pmg.images import load_rgb
from research.pmg.records.keywords import SampleKeywords
from research.pmg.records.samples import PreparedData, Sample
from research.pmg.textsafe import md

# Theme -> how the report names its lover; the sticker world's themes (research.pmg.data.sticker_set.THEMES).
LOVERS = {"cats": "cat lover", "hearts": "heart lover", "food": "food lover", "faces": "smiley lover",
          "animals": "animal lover", "plants": "plant lover", "weather": "weather lover"}
DEFAULT_THEMES = ("cats", "hearts", "food")


@dataclass(frozen=True)
class UserRow:
    label: str  # "cat lover"
    sample: Sample
    images: dict[str, Path]  # column name -> generated image
    preference_keywords: tuple[str, ...]
    target_keywords: tuple[str, ...]


def pick_lovers(data: PreparedData, split: str, themes: Sequence[str] = DEFAULT_THEMES,
                min_share: float = 0.6, allowed: set[str] | None = None) -> dict[str, Sample]:
    """``{theme: sample}``: per theme the held-out sample whose history is most made of it (ties: dataset order)."""
    chosen: dict[str, Sample] = {}
    for theme in themes:
        best, best_count = None, 0
        for sample in data.split(split):
            if allowed is not None and sample.id not in allowed:
                continue
            count = sum(data.items[i].category == theme for i in sample.history)
            if count > best_count:
                best, best_count = sample, count
        if best is not None and best_count >= min_share * len(best.history):
            chosen[theme] = best
    return chosen


def user_rows(data: PreparedData, evaluation: Mapping[str, Any], keywords: Mapping[str, SampleKeywords],
              columns: Mapping[str, str], themes: Sequence[str] = DEFAULT_THEMES) -> list[UserRow]:
    """Rows for the figure from the evaluation summary; ``columns`` maps a column title to a method name.

    Methods the evaluation did not run are left out; no row when no method image exists.
    """
    sources = {title: (evaluation.get("methods") or {}).get(method, {}).get("images")
               for title, method in columns.items()}
    images = {title: read_images(src) for title, src in sources.items() if src}
    if not images:
        return []
    allowed = set.intersection(*(set(found) for found in images.values()))
    rows = []
    for theme, sample in pick_lovers(data, evaluation.get("split", "test"), themes, allowed=allowed).items():
        record = keywords.get(sample.id)
        rows.append(UserRow(label=LOVERS.get(theme, f"{theme} lover"), sample=sample,
                            images={title: found[sample.id] for title, found in images.items()},
                            preference_keywords=tuple(record.preference_keywords) if record else (),
                            target_keywords=tuple(record.target_keywords) if record else ()))
    return rows


def figure(rows: Sequence[UserRow], data: PreparedData, *, cell: int = 96) -> bytes:
    """A PNG: one row per user, ``history x5 | target | <columns>``, with a label row on top."""
    columns = list(rows[0].images) if rows else []
    history_len = max((len(r.sample.history) for r in rows), default=0)
    names = ["history"] * history_len + ["target"] + columns
    gap, label_w, head_h = 6, 110, 30
    width = label_w + len(names) * (cell + gap) + gap
    height = head_h + len(rows) * (cell + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(names):
        if k < history_len and k:
            continue  # "history" once, above its first column
        draw.multiline_text((label_w + gap + k * (cell + gap), 2), name.replace(" ", "\n", 1), fill="black")
    for r, row in enumerate(rows):
        y = head_h + gap + r * (cell + gap)
        draw.text((6, y + cell // 2 - 6), row.label, fill="black")
        paths = [data.image_path(i) for i in row.sample.history] + [data.image_path(row.sample.target)]
        paths = paths[:history_len] + [None] * (history_len - len(row.sample.history)) + paths[-1:]
        paths += [row.images[c] for c in columns]
        for k, path in enumerate(paths):
            if path is None:
                continue
            thumb = load_rgb(path).resize((cell, cell), Image.Resampling.NEAREST)
            x = label_w + gap + k * (cell + gap)
            canvas.paste(thumb, (x, y))
            if k == history_len:  # the target: framed, it is what every generated image should still show
                draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline="grey")
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def markdown(rows: Sequence[UserRow], data: PreparedData, image_name: str) -> list[str]:
    """The report section: the figure and a table of what each user's prompt said (every text escaped)."""
    if not rows:
        return []
    lines = ["## Simulated users", "",
             "Held-out users of the sticker world whose history is mostly one theme; left to right: their last "
             "five stickers, the target sticker (framed), and " + ", ".join(f"**{md(c)}**" for c in rows[0].images)
             + " images for that target.", "", f"![simulated users]({image_name})", "",
             "| user | sample | history | target | preference keywords | target keywords |", "|---|---|---|---|---|---|"]
    for row in rows:
        history = "; ".join(data.items[i].title for i in row.sample.history)
        cells = (row.label, row.sample.id, history, data.items[row.sample.target].title,
                 ", ".join(row.preference_keywords), ", ".join(row.target_keywords))
        lines.append("| " + " | ".join(md(cell) for cell in cells) + " |")
    return lines

