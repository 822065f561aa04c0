"""Training checkpoints: only what learns (soft-preference parameters + optimizer state), atomic, last K kept.

A checkpoint is a folder ``step-000100/`` holding ``train_state.ckpt`` (trainable parameters, Adam
moments, step counters, loss-scale state: everything of the train-step cell except the frozen models),
``soft_preference.ckpt`` (the trainable parameters alone, relative to the encoder: what generation
loads) and ``meta.json``. It is written to a hidden temporary folder and renamed, so a crash leaves
either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
from pathlib import Path

from mindspore import nn

from research.pmg.checkpoints import META_FILE, STATE_FILE, write_checkpoint_dir
from research.pmg.models.soft_preference import SOFT_FILE
from research.pmg.models.weights import load_checkpoint_into

# The learning-rate table is derived from the config (max_steps, warm-up), not state: a resumed run may
# extend max_steps and gets the schedule of its own config.
LR_PARAM = "optimizer.learning_rate"


def save_train_checkpoint(folder: Path, step_cell: nn.Cell, encoder: nn.Cell, frozen_prefixes: tuple[str, ...],
                          meta: dict, keep_last: int) -> Path:
    """Write ``folder/step-<step>/`` atomically and delete all but the newest ``keep_last`` checkpoints."""
    state = [{"name": n, "data": p} for n, p in step_cell.parameters_and_names() if _is_state(n, frozen_prefixes)]
    soft = [{"name": n, "data": p} for n, p in encoder.parameters_and_names() if p.requires_grad]
    return write_checkpoint_dir(folder, {STATE_FILE: state, SOFT_FILE: soft}, meta, keep_last)


def load_train_checkpoint(path: Path, step_cell: nn.Cell, frozen_prefixes: tuple[str, ...]) -> dict:
    """Restore trainable parameters and optimizer state into ``step_cell``; return the checkpoint's meta."""
    load_checkpoint_into(step_cell, path / STATE_FILE, what=f"training checkpoint {path.name}",
                         allow_missing=frozen_prefixes + (LR_PARAM,))
    return json.loads((path / META_FILE).read_text())


def _is_state(name: str, frozen_prefixes: tuple[str, ...]) -> bool:
    return not name.startswith(frozen_prefixes + (LR_PARAM,))
