"""Training checkpoints: only what learns (soft-preference parameters + optimizer state), atomic, last K kept.

A checkpoint is a folder ``step-000100/`` holding ``train_state.ckpt`` (trainable parameters, Adam
moments, step counters, loss-scale state: everything of the train-step cell except the frozen models),
``soft_preference.ckpt`` (the trainable parameters alone, relative to the encoder: what generation
loads) and ``meta.json``. It is written to a hidden temporary folder and renamed, so a crash leaves
either the previous checkpoint or the new one, never half of one.
"""
from __future__ import annotations

from pathlib import Path

from mindspore import nn

from research.pmg.checkpoints import STATE_FILE, load_step_state, step_state
from research.pmg.models.soft_preference import SOFT_FILE


def train_checkpoint_files(step_cell: nn.Cell, encoder: nn.Cell, frozen_prefixes: tuple[str, ...]) -> dict:
    """The ``.ckpt`` files of a checkpoint (save lists for research/pmg/checkpoints.py ``write_checkpoint_dir``)."""
    soft = [{"name": n, "data": p} for n, p in encoder.parameters_and_names() if p.requires_grad]
    return {STATE_FILE: step_state(step_cell, frozen_prefixes), SOFT_FILE: soft}


def load_train_checkpoint(path: Path, step_cell: nn.Cell, frozen_prefixes: tuple[str, ...]) -> dict:
    """Restore trainable parameters and optimizer state into ``step_cell``; return the checkpoint's meta."""
    return load_step_state(path, step_cell, f"training checkpoint {path.name}", frozen_prefixes)
