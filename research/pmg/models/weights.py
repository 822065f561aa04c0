"""Saving and loading MindSpore checkpoints by names relative to the model, with every mismatch named.

Two MindSpore behaviours make the plain API unsafe here. ``load_param_into_net`` only returns the names it
skipped, so a checkpoint for another model size would load "successfully" with most weights left random;
and assigning a Cell as an attribute of another Cell renames its parameters (``model.x`` becomes
``wrapper.model.x``), so ``Parameter.name`` depends on what the model was last wrapped in. These helpers key
everything by ``cell.parameters_and_names()``, which is relative to the cell, and check missing,
unexpected, mis-shaped and mistyped parameters together before touching any weight.

Dtype rule, for every load: a tensor must be of its parameter's kind (float, integer or bool). Within floats
any width loads and is cast (fp16 or bf16 weights into an fp32 CPU model, fp32 training checkpoints into a
bf16 Ascend model); across kinds nothing is cast, since an int32 file holding a float parameter's values
(or truncated ones) is a wrong file, never a precision choice.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import mindspore as ms
from mindspore import nn
from mindspore.common import dtype as mstype

from research.pmg.errors import PMGError

T = TypeVar("T")
# safetensors header dtype names by kind (F64, F32, F16, BF16, F8_E4M3, I64, U8, BOOL, C64, ...)
_SAFETENSORS_KINDS = (("BOOL", "bool"), ("BF", "float"), ("F", "float"), ("I", "integer"), ("U", "integer"),
                      ("C", "complex"))


class CheckpointError(PMGError, ValueError):
    """A checkpoint does not fit the model it is loaded into; the message names the file and the keys."""


def load_checkpoint_into(cell: nn.Cell, path: str | Path, *, what: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Load ``path`` (a MindSpore ``.ckpt`` or ``.safetensors``) into ``cell``, strictly.

    ``allow_missing`` lists name prefixes that may be absent from the file (e.g. trainable parts
    created fresh); any other missing, unexpected, mis-shaped or mistyped parameter raises
    :class:`CheckpointError`. Float values are cast to each parameter's float dtype, so fp16 weights load
    into an fp32 CPU model; another kind (int into float) is refused (module docstring).
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
    mistyped = sorted(f"{n} (file {loaded[n].dtype}, model {p.dtype})" for n, p in params.items()
                      if n in loaded and dtype_kind(loaded[n].dtype) != dtype_kind(p.dtype))
    problems = [f"{label} ({len(names)}): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped),
                                     ("wrong dtype", mistyped))
                if names]
    if problems:
        raise CheckpointError(f"{what} checkpoint {path} does not match the model; " + "; ".join(problems))
    for name, value in loaded.items():
        params[name].set_data(value.astype(params[name].dtype))


def dtype_kind(dtype) -> str:
    """``"float"``, ``"integer"``, ``"bool"`` or ``"complex"`` for a MindSpore dtype (else its name)."""
    if dtype == ms.bool_:
        return "bool"
    for kind, types in (("float", mstype.float_type), ("integer", mstype.int_type + mstype.uint_type),
                        ("complex", mstype.complex_type)):
        if dtype in types:
            return kind
    return str(dtype)


def load_pretrained(load: Callable[[], T], folder: str | Path, *, what: str) -> T:
    """``load()``, a ``from_pretrained`` of the model folder ``folder``, with a damaged or mistyped weight file
    turned into a :class:`CheckpointError` naming it (the library raises from deep inside, or casts silently).

    Every ``*.safetensors`` in ``folder`` is opened first, header only: a truncated, padded or foreign file
    fails there. After loading, each tensor named like a parameter of the model must be of its kind (the rule
    of the module docstring); ``load`` must return the model (an ``nn.Cell``).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    dtypes: dict[Path, dict[str, str]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="np") as handle:
                dtypes[file] = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{what}: {file} cannot be read (truncated or not a safetensors file): "
                                  f"{exc}") from None
    try:
        model = load()
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{what}: {folder} cannot be loaded: {exc}") from None
    params = dict(model.parameters_and_names())
    for file, file_dtypes in dtypes.items():
        mistyped = sorted(f"{name} (file {dtype}, model {params[name].dtype})" for name, dtype in file_dtypes.items()
                          if name in params and _safetensors_kind(dtype) != dtype_kind(params[name].dtype))
        if mistyped:
            raise CheckpointError(f"{what}: {file} does not match the model; wrong dtype ({len(mistyped)}): "
                                  f"{', '.join(mistyped[:10])}{' ...' if len(mistyped) > 10 else ''}")
    return model


def _safetensors_kind(name: str) -> str:
    return next((kind for prefix, kind in _SAFETENSORS_KINDS if name.startswith(prefix)), name)


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
