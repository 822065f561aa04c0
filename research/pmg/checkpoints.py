"""Checkpoint folders every trainer writes: ``step-<n>/`` with ``.ckpt`` files, checksums and ``meta.json``.

A folder is written hidden, fsynced and renamed, so a crash leaves the previous checkpoint or the new one,
never half of one; each ``.ckpt`` gets a checksum sidecar that every loader checks.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mindspore as ms

from research.pmg.integrity import write_sidecar

STATE_FILE = "train_state.ckpt"  # everything of a train-step cell that learns: parameters, optimizer state, counters
META_FILE = "meta.json"


def write_checkpoint_dir(folder: Path, files: dict[str, list[dict]], meta: dict, keep_last: int) -> Path:
    """``folder/step-<meta["step"]>/`` with one ``.ckpt`` per entry of ``files`` (MindSpore save lists), each with a
    checksum sidecar, and ``meta.json``: written to a hidden folder, fsynced, renamed; only the newest
    ``keep_last`` kept. Every trainer's checkpoints go through here, so all are atomic and checksummed alike.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{meta['step']:06d}"
    tmp = folder / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, params in files.items():
        ms.save_checkpoint(params, str(tmp / name))
        write_sidecar(tmp / name)  # a damaged checkpoint is reported, never loaded
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / META_FILE).is_file())
