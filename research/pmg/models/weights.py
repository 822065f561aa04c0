"""Saving and loading MindSpore checkpoints by names relative to the model, with every mismatch named.

Two MindSpore behaviours make the plain API unsafe here. ``load_param_into_net`` only returns the names it
skipped, so a checkpoint for another model size would load "successfully" with most weights left random;
and assigning a Cell as an attribute of another Cell renames its parameters (``model.x`` becomes
``wrapper.model.x``), so ``Parameter.name`` depends on what the model was last wrapped in. These helpers key
everything by ``cell.parameters_and_names()``, which is relative to the cell, and check missing,
unexpected and mis-shaped parameters together before touching any weight.
"""
from __future__ import annotations

import os
from pathlib import Path

import mindspore as ms
from mindspore import nn

from research.pmg.errors import PMGError


class CheckpointError(PMGError, ValueError):
    """A checkpoint does not fit the model it is loaded into; the message names the file and the keys."""


def load_checkpoint_into(cell: nn.Cell, path: str | Path, *, what: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Load ``path`` (a MindSpore ``.ckpt`` or ``.safetensors``) into ``cell``, strictly.

    ``allow_missing`` lists name prefixes that may be absent from the file (e.g. trainable parts
    created fresh); any other missing, unexpected or mis-shaped parameter raises :class:`CheckpointError`.
    Values are cast to each parameter's dtype, so fp16 weights load into an fp32 CPU model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} checkpoint not found: {path}")
    fmt = "safetensors" if path.suffix == ".safetensors" else "ckpt"
    from research.pmg.integrity import verify_sidecar

    verify_sidecar(path, what=f"{what} checkpoint")  # a file changed since it was written is never loaded
    try:
        loaded = ms.load_checkpoint(str(path), format=fmt)
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{what} checkpoint {path} cannot be read (truncated or not a {fmt} file): {exc}") from None
    params = dict(cell.parameters_and_names())
    missing = sorted(n for n in params if n not in loaded and not n.startswith(allow_missing))
    unexpected = sorted(n for n in loaded if n not in params)
    mis_shaped = sorted(f"{n} (file {tuple(loaded[n].shape)}, model {tuple(p.shape)})"
                        for n, p in params.items() if n in loaded and tuple(loaded[n].shape) != tuple(p.shape))
    problems = [f"{label} ({len(names)}): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
                if names]
    if problems:
        raise CheckpointError(f"{what} checkpoint {path} does not match the model; " + "; ".join(problems))
    for name, value in loaded.items():
        params[name].set_data(value.astype(params[name].dtype))


def save_checkpoint_of(cell: nn.Cell, path: str | Path) -> None:
    """Write ``cell``'s parameters under names relative to it, atomically (a crash leaves the old file)."""
    path = Path(path)
    if path.suffix != ".ckpt":  # MindSpore would silently append ".ckpt" to any other name
        raise ValueError(f"checkpoint path must end with .ckpt: {path}")
    tmp = path.with_name(f".{path.stem}.partial.ckpt")
    ms.save_checkpoint([{"name": name, "data": param} for name, param in cell.parameters_and_names()], str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
