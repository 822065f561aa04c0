"""Training checkpoints: only what learns (soft-preference parameters + optimizer state), atomic, last K kept.

A checkpoint is a folder ``step-000100/`` holding ``train_state.ckpt`` (trainable parameters, Adam
moments, step counters, loss-scale state: everything of the train-step cell except the frozen models),
``soft_preference.ckpt`` (the trainable parameters alone, relative to the encoder: what generation
loads) and ``meta.json``. It is written to a hidden temporary folder and renamed, so a crash leaves
either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mindspore as ms
from mindspore import nn

from research.pmg.integrity import write_sidecar
from research.pmg.models.weights import load_checkpoint_into

STATE_FILE = "train_state.ckpt"
SOFT_FILE = "soft_preference.ckpt"
META_FILE = "meta.json"
# The learning-rate table is derived from the config (max_steps, warm-up), not state: a resumed run may
# extend max_steps and gets the schedule of its own config.
LR_PARAM = "optimizer.learning_rate"


def save_train_checkpoint(folder: Path, step_cell: nn.Cell, encoder: nn.Cell, frozen_prefixes: tuple[str, ...],
                          meta: dict, keep_last: int) -> Path:
    """Write ``folder/step-<step>/`` atomically and delete all but the newest ``keep_last`` checkpoints."""
    state = [{"name": n, "data": p} for n, p in step_cell.parameters_and_names() if _is_state(n, frozen_prefixes)]
    soft = [{"name": n, "data": p} for n, p in encoder.parameters_and_names() if p.requires_grad]
    return write_checkpoint_dir(folder, {STATE_FILE: state, SOFT_FILE: soft}, meta, keep_last)


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


def load_train_checkpoint(path: Path, step_cell: nn.Cell, frozen_prefixes: tuple[str, ...]) -> dict:
    """Restore trainable parameters and optimizer state into ``step_cell``; return the checkpoint's meta."""
    load_checkpoint_into(step_cell, path / STATE_FILE, what=f"training checkpoint {path.name}",
                         allow_missing=frozen_prefixes + (LR_PARAM,))
    return json.loads((path / META_FILE).read_text())


def _is_state(name: str, frozen_prefixes: tuple[str, ...]) -> bool:
    return not name.startswith(frozen_prefixes + (LR_PARAM,))
