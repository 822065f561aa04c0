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
# The learning-rate table is derived from the config (max_steps, warm-up), not state: a resumed run may
# extend max_steps and gets the schedule of its own config. MindSpore names it "optimizer.learning_rate.learning_rate".
LR_PARAM = "optimizer.learning_rate"


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


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder``; None when there is none."""
    return (list_checkpoints(folder) or [None])[-1]


def step_state(step_cell, frozen_prefixes: tuple[str, ...] = ()) -> list[dict]:
    """The save list of ``STATE_FILE``: every parameter of ``step_cell`` but the frozen models' and the LR table."""
    skip = frozen_prefixes + (LR_PARAM,)
    return [{"name": n, "data": p} for n, p in step_cell.parameters_and_names() if not n.startswith(skip)]


def load_step_state(path: Path, step_cell, what: str, frozen_prefixes: tuple[str, ...] = ()) -> dict:
    """Restore checkpoint ``path``'s ``STATE_FILE`` into ``step_cell`` (strictly: only the frozen models' and the LR
    table may be absent); return its meta. ``what`` names the checkpoint in errors."""
    from research.pmg.models.weights import load_checkpoint_into  # not at the top: research.pmg.models imports us

    load_checkpoint_into(step_cell, path / STATE_FILE, what=what, allow_missing=frozen_prefixes + (LR_PARAM,))
    return json.loads((path / META_FILE).read_text())
