"""Checking a conversion before writing it, writing it atomically, and summing up what was written.

A converter describes its output as :class:`Target` tensors, one per parameter of the model that will
load it, each naming the source tensors it is made from. :func:`resolve` checks that plan against the
source files in one go: every target filled exactly once, and every missing, unknown (unused and not
knowingly ignored) or mis-shaped source tensor listed by name. Only then is anything written: into a
temporary file or folder beside the destination, fsynced, and renamed into place, so a failure at any
point leaves no output behind. For Stable Diffusion and CLIP the target parameters come from the MindONE
model itself (:func:`mindone_spec`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ckpt_convert.sources import (FLOAT_DTYPES, MINDSPORE_TYPES, USER_DTYPES, ConversionError, TensorRef, short_list,
                                  cast, dtype_name, itemsize)

# A source tensor the converter deliberately drops returns the reason from an ``ignore`` function.
IgnoreRule = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Target:
    """One output tensor: a parameter of the model that will load the file.

    ``sources`` are (name, expected shape) pairs; ``combine`` turns their arrays into this tensor by
    moving data only (slicing, concatenation, reshapes), so any dtype passes through bit-exactly. Without
    ``combine`` the single source is copied as is.
    """

    name: str
    shape: tuple[int, ...]
    sources: tuple[tuple[str, tuple[int, ...]], ...]
    combine: Callable[..., np.ndarray] | None = None


@dataclass(frozen=True)
class Resolved:
    """A checked target: its source tensors found, shapes agreed, output dtype chosen."""

    target: Target
    refs: tuple[TensorRef, ...]
    dtype: str

    def array(self) -> np.ndarray:
        arrays = [ref.read() for ref in self.refs]
        out = self.target.combine(*arrays) if self.target.combine else arrays[0]
        return cast(np.asarray(out).reshape(self.target.shape), self.refs[0].dtype, self.dtype)


def out_dtype(requested: str) -> str | None:
    """The safetensors code for a ``--dtype`` value; None for ``keep`` (each tensor keeps its source dtype)."""
    if requested == "keep":
        return None
    if requested not in USER_DTYPES:
        raise ConversionError(f"--dtype must be keep, {', '.join(USER_DTYPES)}; got {requested!r}")
    return USER_DTYPES[requested]


def resolve(targets: Iterable[Target], sources: dict[str, TensorRef], *, ignore: IgnoreRule,
            dtype: str | None, what: str) -> tuple[list[Resolved], dict[str, str]]:
    """Check ``targets`` against ``sources``; return the resolved targets and the ignored sources with reasons.

    Raises :class:`ConversionError` listing every problem: a target produced twice, source tensors that are
    missing or mis-shaped, and unknown ones (in the files but neither used nor ignored on purpose). ``dtype``
    is the output float code (None keeps each source's); integer tensors are never converted.
    """
    resolved, used, seen = [], set(), set()
    duplicate, missing, mis_shaped, mixed = [], [], [], []
    for target in targets:
        if target.name in seen:
            duplicate.append(target.name)
            continue
        seen.add(target.name)
        refs = []
        for name, shape in target.sources:
            ref = sources.get(name)
            if ref is None:
                missing.append(name if name == target.name else f"{name} (for {target.name})")
            elif ref.shape != tuple(shape):
                mis_shaped.append(f"{name} (file {list(ref.shape)}, expected {list(shape)})")
            else:
                refs.append(ref)
            used.add(name)
        if len(refs) != len(target.sources):
            continue
        if len({ref.dtype for ref in refs}) > 1:
            mixed.append(target.name)
            continue
        src = refs[0].dtype
        resolved.append(Resolved(target, tuple(refs), dtype if dtype and src in FLOAT_DTYPES else src))
    ignored = {name: reason for name in sources if name not in used and (reason := ignore(name))}
    unknown = sorted(name for name in sources if name not in used and name not in ignored)
    # a fused source feeds several targets (q/k/v): it is listed, and counted, once
    problems = [(f"{label} ({len(set(names))}): {short_list(sorted(set(names)))}") for label, names in (
        ("produced twice", duplicate), ("missing in the source", missing),
        ("mis-shaped", mis_shaped), ("unknown (not part of this model)", unknown),
        ("sources with different dtypes", mixed)) if names]
    if problems:
        files = sorted({str(ref.file) for ref in sources.values()})
        raise ConversionError(f"{what}: the weights do not match the expected architecture; " + "; ".join(problems)
                              + f" [files: {short_list(files, 3)}]")
    return resolved, ignored


# ---------------------------------------------------------------------------------------------------------------------
# The parameters a MindONE model expects (SD and CLIP targets)
# ---------------------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path}: not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


class Spec(dict):
    """Hugging Face parameter name -> shape of a MindONE model; ``mindspore_names`` maps to the Cell's own names.

    MindONE keeps HF names except where a MindSpore layer names a parameter differently (``nn.Embedding``'s
    ``embedding_table``, ``nn.LayerNorm``'s ``gamma``/``beta``); its loader maps those, and the spec
    inverts the same mapping, so the check is against exactly what the loader will look for.
    """

    def __init__(self, cell, library: str):
        if library == "transformers":
            from mindone.transformers.modeling_utils import _get_pt2ms_mappings
        else:
            from mindone.diffusers.models.modeling_utils import _get_pt2ms_mappings
        hf_name = {ms_name: name for name, (ms_name, _) in _get_pt2ms_mappings(cell).items() if ms_name}
        params = list(cell.parameters_and_names())
        super().__init__((hf_name.get(name, name), tuple(param.shape)) for name, param in params)
        self.mindspore_names = {hf_name.get(name, name): name for name, _ in params}


def mindone_spec(library: str, class_name: str, config: dict) -> Spec:
    """Parameters of the MindONE model ``class_name`` built from ``config`` without allocating its weights.

    ``library`` is "transformers" (``class_name`` such as ``CLIPModel``, configured by ``CLIPConfig``) or
    "diffusers" (``UNet2DConditionModel``, ``AutoencoderKL``).
    """
    from mindspore.nn.utils import no_init_parameters

    # Importing MindONE prints transformers' docstring notices on stdout (where the summary goes) and
    # deprecation warnings that are not the user's concern.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if library == "transformers":
            import mindone.transformers as mt
            import transformers

            config_class = getattr(transformers, class_name.removesuffix("Model") + "Config")
            with no_init_parameters():
                model = getattr(mt, class_name)(config_class.from_dict(config))
        else:
            import mindone.diffusers as md

            with no_init_parameters():
                model = getattr(md, class_name).from_config(config)
    return Spec(model, library)


def identity_targets(spec: dict[str, tuple[int, ...]], prefix: str = "",
                     aliases: dict[str, str] | None = None,
                     sources: dict[str, TensorRef] | None = None) -> list[Target]:
    """One target per spec parameter, copied from the source of the same name (``prefix`` added to both).

    ``aliases`` maps a name suffix to an older name the same tensor may be stored under; the alias is used
    only when the current name is absent from ``sources``.
    """
    targets = []
    for name, shape in spec.items():
        source = prefix + name
        for new, old in (aliases or {}).items():
            if sources is not None and source not in sources and source.endswith(new):
                candidate = source[: -len(new)] + old
                if candidate in sources:
                    source = candidate
        targets.append(Target(prefix + name, shape, ((source, shape),)))
    return targets


# ---------------------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------------------
_EXPONENT = {"F64": (np.uint64, np.uint64(0x7FF0000000000000)), "F32": (np.uint32, np.uint32(0x7F800000)),
             "F16": (np.uint16, np.uint16(0x7C00)), "BF16": (np.uint16, np.uint16(0x7F80))}


@dataclass
class Summary:
    """What a conversion wrote, printed at the end so the user can check it and compare runs.

    ``checksum`` is a SHA-256 over every tensor's name, dtype, shape and bytes in name order: the same
    weights give the same checksum whatever the file layout (one file or shards, ckpt or safetensors).
    """

    what: str
    files: list[Path] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0
    bytes: int = 0
    dtypes: Counter = field(default_factory=Counter)
    source_dtypes: Counter = field(default_factory=Counter)
    non_finite: int = 0
    ignored: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _digests: dict[str, str] = field(default_factory=dict, repr=False)

    def add(self, name: str, dtype: str, array: np.ndarray, source_dtype: str) -> None:
        data = np.ascontiguousarray(array)
        self._digests[name] = f"{dtype} {list(data.shape)} " + hashlib.sha256(memoryview(data).cast("B")).hexdigest()
        self.tensors += 1
        self.parameters += data.size
        self.bytes += data.nbytes
        self.dtypes[dtype_name(dtype)] += 1
        self.source_dtypes[dtype_name(source_dtype)] += 1
        if dtype in _EXPONENT:  # all exponent bits set: inf or NaN (on the bits: fast for every float width)
            bits, mask = data.reshape(-1).view(_EXPONENT[dtype][0]), _EXPONENT[dtype][1]
            self.non_finite += int(np.count_nonzero((bits & mask) == mask))

    @property
    def checksum(self) -> str:
        return checksum_of(self._digests)

    def text(self) -> str:
        seconds = time.monotonic() - self.started
        ignored = Counter(self.ignored.values())
        lines = [
            f"{self.what}: wrote {', '.join(str(f) for f in self.files)}",
            f"  tensors     {self.tensors} (every target parameter filled exactly once)",
            f"  parameters  {self.parameters:,}",
            f"  bytes       {self.bytes:,} ({self.bytes / 2**30:.2f} GiB)",
            f"  dtype       {_counts(self.dtypes)} (from {_counts(self.source_dtypes)})",
            f"  checksum    sha256:{self.checksum}",
            f"  time        {seconds:.1f} s",
        ]
        if self.non_finite:
            lines.append(f"  WARNING     {self.non_finite:,} non-finite values (NaN/inf) in the output")
        for reason, count in sorted(ignored.items()):
            lines.append(f"  ignored     {count} source tensor(s): {reason}")
        lines += [f"  note        {note}" for note in self.notes]
        return "\n".join(lines)


def checksum_of(digests: dict[str, str]) -> str:
    text = "\n".join(f"{name} {digests[name]}" for name in sorted(digests))
    return hashlib.sha256(text.encode()).hexdigest()


def checksum(refs: dict[str, TensorRef]) -> str:
    """The :class:`Summary` checksum of tensors as they are in their files (to compare a round trip)."""
    digests = {}
    for name, ref in refs.items():
        data = np.ascontiguousarray(ref.read())
        digests[name] = f"{ref.dtype} {list(ref.shape)} " + hashlib.sha256(memoryview(data).cast("B")).hexdigest()
    return checksum_of(digests)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(counter.items())) or "-"


# ---------------------------------------------------------------------------------------------------------------------
# Writers (streaming: one tensor in memory at a time)
# ---------------------------------------------------------------------------------------------------------------------
def write_safetensors(path: Path, items: list[Resolved], summary: Summary | None, *,
                      rename: Callable[[str], str] = str) -> None:
    """Write ``items`` as one safetensors file in the layout the safetensors library itself produces.

    Tensors are ordered by descending item size, then name (keeps every tensor aligned); the header
    carries ``{"format": "pt"}``, which transformers requires, and is space-padded to 8 bytes.
    ``rename`` maps target names to the names stored in the file (the summary keeps the target names);
    with ``summary`` None nothing is counted (for a second copy of tensors already counted).
    """
    order = sorted(items, key=lambda r: (-itemsize(r.dtype), rename(r.target.name)))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in order:
        size = math.prod(item.target.shape) * itemsize(item.dtype)
        header[rename(item.target.name)] = {"dtype": item.dtype, "shape": list(item.target.shape),
                                            "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little"))
        handle.write(blob)
        for item in order:
            data = np.ascontiguousarray(item.array())
            if summary is not None:
                summary.add(item.target.name, item.dtype, data, item.refs[0].dtype)
            handle.write(memoryview(data).cast("B"))


_CKPT_SLICE = 512 * 1024 * 1024  # bytes per record, as mindspore.save_checkpoint slices big tensors


def write_mindspore_ckpt(path: Path, items: list[Resolved], summary: Summary | None, *,
                         rename: Callable[[str], str] = str) -> None:
    """Write ``items`` as a MindSpore ``.ckpt`` readable by ``mindspore.load_checkpoint``, with a CRC trailer.

    The same records as ``mindspore.save_checkpoint(..., crc_check=True)`` (see the codec notes in
    :mod:`ckpt_convert.sources`), streamed: each record's header is encoded here and the tensor bytes
    follow straight from the array. ``rename`` and ``summary`` as in :func:`write_safetensors`.
    """
    crc = 0
    with open(path, "wb") as handle:
        for item in items:
            data = np.ascontiguousarray(item.array())
            if summary is not None:
                summary.add(item.target.name, item.dtype, data, item.refs[0].dtype)
            raw = memoryview(data).cast("B")
            for start in range(0, max(len(raw), 1), _CKPT_SLICE):
                content = raw[start:start + _CKPT_SLICE]
                head = _record_head(rename(item.target.name), item.target.shape, MINDSPORE_TYPES[item.dtype],
                                    len(content))
                crc = zlib.crc32(content, zlib.crc32(head, crc))
                handle.write(head)
                handle.write(content)
        handle.write(b"crc_num" + crc.to_bytes(10, "big"))


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _record_head(name: str, shape: tuple[int, ...], type_name: str, content_len: int) -> bytes:
    """Every byte of one Checkpoint record except the ``content_len`` tensor bytes that follow it."""
    def field(number: int, length: int) -> bytes:  # key and length of a length-delimited field
        return _uvarint(number << 3 | 2) + _uvarint(length)

    tag, type_bytes = name.encode("utf-8"), type_name.encode("ascii")
    tensor = b"".join(b"\x08" + _uvarint(dim) for dim in shape) + field(2, len(type_bytes)) + type_bytes \
        + field(3, content_len)
    value = field(1, len(tag)) + tag + field(2, len(tensor) + content_len) + tensor
    return field(1, len(value) + content_len) + value


def torch_dtype_name(items: list[Resolved]) -> str | None:
    """The ``torch_dtype`` a transformers config.json should state for ``items`` (None if mixed)."""
    names = {dtype_name(item.dtype) for item in items if item.dtype in FLOAT_DTYPES}
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(names.pop()) if len(names) == 1 else None


def set_torch_dtype(config: dict, items: list[Resolved]) -> dict:
    """``config`` with its dtype field (``torch_dtype``, or ``dtype`` as transformers 4.56+ writes) updated."""
    name = torch_dtype_name(items)
    if name is None:
        return config
    config = dict(config)
    for key in [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]:
        config[key] = name
    return config


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------------
# Atomic output
# ---------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_outputs(*destinations: Path, overwrite: bool, folders: bool = False) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``destinations``; on success fsync and rename them into place.

    With ``folders`` the temporaries are empty folders, else files. On any exception every temporary is
    removed and no destination is touched, so an interrupted or failed conversion leaves nothing
    behind. Existing destinations are refused unless ``overwrite``.
    """
    for dst in destinations:
        if dst.exists() and not overwrite:
            raise ConversionError(f"{dst} already exists; pass --overwrite to replace it")
        if not dst.parent.is_dir():
            raise ConversionError(f"{dst.parent}: output folder does not exist")
    temps = []
    try:
        for dst in destinations:
            if not folders:
                fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
                os.close(fd)
                temps.append(Path(name))
            else:
                temps.append(Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)))
        yield temps
        for temp in temps:
            _fsync_tree(temp)
        for temp, dst in zip(temps, destinations):
            _replace(temp, dst)
        for parent in {dst.parent for dst in destinations}:
            _fsync_dir(parent)
    finally:
        for temp in temps:
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            elif temp.exists():
                temp.unlink()


def _replace(temp: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():  # os.replace cannot replace a non-empty folder: move it aside first
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(temp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, dst)
    os.chmod(dst, 0o755 if dst.is_dir() else 0o644)  # mkstemp/mkdtemp create private (0600/0700) entries


def _fsync_tree(path: Path) -> None:
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in paths:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if path.is_dir():
        for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_files(src: Path, dst: Path, names: Iterable[str]) -> list[str]:
    """Copy the files among ``names`` that exist in ``src`` into ``dst``; return the names copied."""
    copied = []
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
