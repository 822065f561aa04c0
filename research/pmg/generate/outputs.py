"""What the generation stage writes under ``<output_dir>/generate/``, and reading it back on resume.

::

    .pmg-owned               the project's marker (research/pmg/ownership.py): only a folder holding it, or an
                             empty one, is written into
    settings.json            what determines the images (weights, sampler, balancing, seed, models); a resumed
                             run must match it. Written once the models it names have loaded, so a run that
                             failed to load them does not bind the folder to its settings
    manifest.jsonl           one line per finished sample (schema in README.md), appended and fsynced as one
                             write per sample: a crash leaves at most a torn last line, dropped on resume
    images/<sample>/<k>_<m>.png   candidate m of weight set k
    contact_sheets/<sample>.png   history | candidates (chosen framed) | chosen
    summary.json             counts and mean scores over the manifest, rewritten at the end of a run

``<sample>`` is the sample id with every character outside ``[A-Za-z0-9_.~-]`` percent-encoded (ids such as
``user:3`` hold a colon). Every file is written to a temporary name and renamed, so none is ever half-written.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from research.pmg import testhooks
from research.pmg.errors import PMGError
from research.pmg.files import write_atomic

MANIFEST_FILE, SETTINGS_FILE, SUMMARY_FILE = "manifest.jsonl", "settings.json", "summary.json"
IMAGES_DIR, SHEETS_DIR = "images", "contact_sheets"
SHEET_TILE = 160  # pixels per tile on a contact sheet (images are resized to it)
_GAP, _LABEL, _FRAME = 12, 14, 4
_CHOSEN_COLOUR, _BACKGROUND = (40, 180, 60), (255, 255, 255)


class ManifestError(PMGError, ValueError):
    """The manifest or settings of an output folder are unreadable or were made with other settings."""


def sample_dirname(sample_id: str) -> str:
    """A file-name-safe, reversible form of a sample id (``user:3`` -> ``user%3A3``)."""
    name = quote(sample_id, safe="")
    return name.replace(".", "%2E") if set(name) <= {"."} else name  # "." and ".." are not names


def candidate_image(sample_id: str, k: int, m: int) -> str:
    """Path of candidate (k, m) relative to the generate folder."""
    return f"{IMAGES_DIR}/{sample_dirname(sample_id)}/{k}_{m}.png"


def contact_sheet_path(sample_id: str) -> str:
    return f"{SHEETS_DIR}/{sample_dirname(sample_id)}.png"


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The finished samples ``{sample id: record}``; a torn last line (an interrupted append) is cut off.

    Any other unreadable line is corruption and raises :class:`ManifestError` naming the line.
    """
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):  # the last append did not finish: drop its bytes so the next append starts clean
        with open(path, "r+b") as handle:
            handle.truncate(complete)
            handle.flush()
            os.fsync(handle.fileno())
    records = {}
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            sample = record["sample"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ManifestError(f"{path}:{number}: not a manifest record ({exc}); move the file away to start "
                                "over") from None
        records[sample] = record
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one sample's line with a single write, then fsync: whole, or a torn tail that resume drops."""
    line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    testhooks.hold("generate", "sample-written")


def check_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix results made with other settings than ``settings`` into ``folder`` (nothing is written)."""
    path = folder / SETTINGS_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: not valid JSON: {exc}") from None
        new = json.loads(json.dumps(settings))  # the JSON form, as stored (tuples become lists)
        if old != new:
            old_flat, new_flat = _flatten(old), _flatten(new)
            key = next(k for k in [*new_flat, *old_flat] if old_flat.get(k, _ABSENT) != new_flat.get(k, _ABSENT))
            raise ManifestError(f"{folder} holds results made with other settings ({key}: "
                                f"{_short(old_flat.get(key, _ABSENT))} there, {_short(new_flat.get(key, _ABSENT))} "
                                "now); choose another output folder or remove it")


def record_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` in ``folder`` (checked with :func:`check_settings` first) unless they are there already."""
    check_settings(folder, settings)
    if not (folder / SETTINGS_FILE).is_file():
        write_atomic(folder / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True) + "\n")


_ABSENT = "<absent>"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, in insertion order."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def save_png(path: Path, image: np.ndarray | Image.Image) -> None:
    """A uint8 ``(H, W, 3)`` array or a PIL image -> PNG, written atomically (parent folders are created)."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())


def contact_sheet(history: list[Image.Image], candidates: np.ndarray, chosen: int, labels: list[str], *,
                  target: Image.Image | None = None) -> Image.Image:
    """One row: the user's history images | the target (when given) | every candidate (the chosen one framed) |
    the chosen image.

    ``history`` and ``target`` are RGB images (:func:`research.pmg.images.load_rgb`), ``candidates`` uint8
    ``(n, H, W, 3)``; ``labels`` (one per candidate) are printed under them. Every image is framed as the
    evaluation frames it (centred square crop, bicubic) at :data:`SHEET_TILE` pixels.
    """
    from research.pmg.images import fit as fit_square

    tile, step = SHEET_TILE, SHEET_TILE + _GAP

    def fit(img: Image.Image) -> Image.Image:
        return Image.fromarray(fit_square(img, tile, "center_crop"))

    shown = [fit(Image.fromarray(c)) for c in candidates]
    width = 4 * _GAP + (len(history) + len(shown)) * step + tile + (step + _GAP if target is not None else 0)
    sheet = Image.new("RGB", (width, tile + 2 * _GAP + 2 * _LABEL), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = _GAP + _LABEL
    x = _GAP
    draw.text((x, 2), "history", fill=(0, 0, 0))
    for img in history:
        sheet.paste(fit(img), (x, y))
        x += step
    x += _GAP
    if target is not None:
        draw.text((x, 2), "target", fill=(0, 0, 0))
        sheet.paste(fit(target), (x, y))
        x += step + _GAP
    draw.text((x, 2), "candidates", fill=(0, 0, 0))
    for i, (img, label) in enumerate(zip(shown, labels)):
        if i == chosen:
            draw.rectangle((x - _FRAME, y - _FRAME, x + tile + _FRAME - 1, y + tile + _FRAME - 1), fill=_CHOSEN_COLOUR)
        sheet.paste(img, (x, y))
        draw.text((x, y + tile + 2), label, fill=(0, 0, 0))
        x += step
    x += _GAP
    draw.text((x, 2), "chosen", fill=(0, 0, 0))
    sheet.paste(shown[chosen], (x, y))
    return sheet


def summarize(records: list[dict[str, Any]], weight_sets: list[list[float]]) -> dict[str, Any]:
    """Counts and means over finished samples: what a comparison of settings (e.g. the two weightings) reads."""
    chosen = [r["candidates"][r["chosen"]] for r in records]
    key = lambda pair: ",".join(f"{float(w):g}" for w in pair)  # noqa: E731  "w_p,w_t"
    picks = {key(pair): 0 for pair in weight_sets}
    for c in chosen:
        picks[key(c["weights"])] = picks.get(key(c["weights"]), 0) + 1

    def mean(key, rows):
        return float(np.mean([row[key] for row in rows])) if rows else None

    every = [c for r in records for c in r["candidates"]]
    return {"samples": len(records), "candidates": len(every),
            "chosen_mean": {key: mean(key, chosen) for key in ("d_p", "d_t", "z")},
            "all_mean": {key: mean(key, every) for key in ("d_p", "d_t", "z")},
            "picks_per_weight_set": picks}
