"""Helpers for the data-stage tests: tiny images (good and corrupt), raw files, and running the stage."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from research.pmg.config.data import DataConfig
from research.pmg.data.prepare import prepare

REPO = Path(__file__).resolve().parent.parent


def image_bytes(colour=(200, 30, 30), fmt="JPEG", size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose pixel data stops early: opens and verifies, fails to decode."""
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10]


def write_images(folder: Path, good: list[str], corrupt: list[str] = (), ext=".jpg", fmt="JPEG") -> None:
    """Valid images for ``good`` ids and truncated JPEGs for ``corrupt`` ids."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, item_id in enumerate(good):
        (folder / f"{item_id}{ext}").write_bytes(image_bytes((20 * n % 256, 100, 150), fmt))
    for item_id in corrupt:
        (folder / f"{item_id}.jpg").write_bytes(truncated_jpeg())


def write_text(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        (folder / name).write_bytes(data)
    return folder


def run(scenario: str, raw: Path, out: Path, **settings):
    """Prepare with progress bars off; returns (summary, report)."""
    return prepare(scenario, DataConfig(raw=str(raw), out=str(out), **settings), progress=False)


def samples(out: Path) -> list[tuple]:
    """(id, user, history, target, split) of every sample, in file order."""
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["id"], r["user_id"], r["history"], r["target"], r["split"]) for r in rows]


def items(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r for r in rows}


def issues(report) -> set[tuple[str, int, str]]:
    """(file name, line, kind) of every reported issue."""
    return {(Path(i.file).name, i.line, i.kind) for i in report.issues}


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a data-stage command line in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
