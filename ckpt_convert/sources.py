"""Reading weights safely: safetensors (bf16 included) and MindSpore ``.ckpt`` without torch, every file checked.

Nothing is loaded until a converter asks for it: readers return :class:`TensorRef` objects (name, dtype,
shape and a ``read()`` that memory-maps the bytes), so a 7B model is converted one tensor at a time.
Headers and record framing are validated up front, so a truncated or corrupt file fails before any
output is written, with the file named. Pickle-based PyTorch files (``.bin``, ``.pth``, torch ``.ckpt``)
can execute arbitrary code when loaded; they are refused unless the user passes ``--allow-pickle``.
"""
from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from research.pmg.errors import PMGError


class ConversionError(PMGError, ValueError):
    """A user-facing conversion failure: bad input, wrong architecture, missing file. The message says which."""


# safetensors dtype code -> numpy storage dtype. NumPy has no bfloat16: BF16 tensors travel as their uint16
# bit patterns, and only :func:`cast` interprets them.
NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
USER_DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}  # the names the CLI and the runtime config use
DTYPE_NAMES = {code: name for name, code in USER_DTYPES.items()} | {"F64": "fp64"}
# MindSpore's TensorProto.tensor_type strings (mindspore.train.serialization.tensor_to_ms_type)
MINDSPORE_TYPES = {
    "F64": "Float64", "F32": "Float32", "F16": "Float16", "BF16": "BFloat16", "I64": "Int64", "I32": "Int32",
    "I16": "Int16", "I8": "Int8", "U8": "UInt8", "BOOL": "Bool",
}
_FROM_MINDSPORE = {name: code for code, name in MINDSPORE_TYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def itemsize(code: str) -> int:
    return np.dtype(NUMPY_DTYPES[code]).itemsize


def dtype_name(code: str) -> str:
    """``fp32``/``fp16``/``bf16`` for floats, the safetensors code otherwise."""
    return DTYPE_NAMES.get(code, code)


@dataclass(frozen=True)
class TensorRef:
    """One tensor in a file, not read yet. ``read()`` returns its array (BF16 as uint16 bit patterns)."""

    name: str
    dtype: str  # a key of NUMPY_DTYPES
    shape: tuple[int, ...]
    file: Path
    read: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


def cast(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert between float codes; BF16 rounds to nearest even (as torch and MindSpore do), NaN stays NaN."""
    if src == dst:
        return array
    if src not in FLOAT_DTYPES or dst not in FLOAT_DTYPES:
        raise ConversionError(f"cannot convert {dtype_name(src)} to {dtype_name(dst)}: only floating-point "
                              "tensors change dtype")
    values = (array.astype(np.uint32) << 16).view(np.float32) if src == "BF16" else array
    if dst != "BF16":
        with np.errstate(over="ignore"):  # values beyond fp16's range become inf; the summary counts them
            return values.astype(NUMPY_DTYPES[dst])
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    rounded[np.isnan(values)] = 0x7FC0
    return rounded


# ---------------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------------
def read_safetensors(path: str | Path) -> dict[str, TensorRef]:
    """The tensors of one ``.safetensors`` file, after checking its header against the file size.

    The tensor byte ranges must tile the data section exactly: a file cut short (an interrupted
    download) or with bytes appended fails here, naming the file and what is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ConversionError(f"{path}: truncated or not a safetensors file ({size} bytes, no header)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(_MAX_HEADER, size - 8):
            raise ConversionError(f"{path}: corrupt or truncated safetensors file: the header claims {header_len} "
                                  f"bytes but the file has {size - 8} after the length field")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: corrupt safetensors header (not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_start, data_len = 8 + header_len, size - 8 - header_len
    refs, spans = {}, []
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"{path}: corrupt safetensors header entry for '{name}'") from None
        if code not in NUMPY_DTYPES:
            raise ConversionError(f"{path}: tensor '{name}' has dtype {code}, which this converter does not handle")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end) or min(shape, default=0) < 0:
            raise ConversionError(f"{path}: corrupt safetensors header entry for '{name}'")
        if end - begin != math.prod(shape) * itemsize(code):
            raise ConversionError(f"{path}: corrupt safetensors header: '{name}' {code}{list(shape)} needs "
                                  f"{math.prod(shape) * itemsize(code)} bytes, its byte range holds {end - begin}")
        spans.append((begin, end, name))
        refs[name] = TensorRef(name, code, shape, path, _mapped(path, data_start + begin, code, shape))
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise ConversionError(f"{path}: corrupt safetensors header: byte ranges overlap or leave a gap at '{name}'")
        covered = end
    if covered > data_len:
        raise ConversionError(f"{path}: truncated: the header lists {covered} bytes of tensor data, the file holds "
                              f"{data_len} (an interrupted download or copy?)")
    if covered < data_len:
        raise ConversionError(f"{path}: corrupt: {data_len - covered} bytes after the last tensor")
    return refs


def _mapped(path: Path, offset: int, code: str, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        if math.prod(shape) == 0:
            return np.zeros(shape, NUMPY_DTYPES[code])
        return np.memmap(path, dtype=NUMPY_DTYPES[code], mode="r", offset=offset, shape=shape)

    return read


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face weight sets: single file, sharded with an index, or (only when allowed) pickle
# ---------------------------------------------------------------------------------------------------------------------
def read_hf_weights(folder: str | Path, safetensors_stem: str, pickle_stem: str, *, allow_pickle: bool,
                    variant: str = "") -> dict[str, TensorRef]:
    """All tensors of the weights in ``folder``, the way ``from_pretrained`` finds them.

    Looks for ``<safetensors_stem>[.<variant>].safetensors``, then its ``.index.json`` (shards), then the
    pickle files ``<pickle_stem>[.<variant>].bin`` (and index), which need ``allow_pickle``.
    """
    folder = Path(folder)
    dot = f".{variant}" if variant else ""
    single = folder / f"{safetensors_stem}{dot}.safetensors"
    index = folder / f"{safetensors_stem}{dot}.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        return _read_sharded(index, read_safetensors)
    pickled, pickled_index = folder / f"{pickle_stem}{dot}.bin", folder / f"{pickle_stem}{dot}.bin.index.json"
    if pickled.is_file():
        return read_torch_pickle(pickled, allow_pickle=allow_pickle)
    if pickled_index.is_file():
        return _read_sharded(pickled_index, lambda shard: read_torch_pickle(shard, allow_pickle=allow_pickle))
    raise ConversionError(f"{folder}: no weights found (looked for {single.name}, {index.name}, {pickled.name})")


def _read_sharded(index: Path, read_shard: Callable[[Path], dict[str, TensorRef]]) -> dict[str, TensorRef]:
    """A sharded weight set; every shard the index names must exist and hold exactly the tensors listed for it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        weight_map = None
    if not isinstance(weight_map, dict):
        raise ConversionError(f"{index}: corrupt shard index (expected JSON with a 'weight_map' object)")
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    refs: dict[str, TensorRef] = {}
    for shard, listed in sorted(by_shard.items()):
        path = index.parent / shard
        if not path.is_file():
            raise ConversionError(f"missing shard: {path} (listed in {index.name}, {len(listed)} tensors)")
        found = read_shard(path)
        absent, extra = sorted(listed - set(found)), sorted(set(found) - listed)
        if absent or extra:
            raise ConversionError(f"{path} does not match {index.name}: " + "; ".join(
                f"{label} ({len(names)}): {short_list(names)}" for label, names in
                (("listed but absent", absent), ("present but listed elsewhere", extra)) if names))
        refs.update(found)
    return refs


def short_list(names: list[str], limit: int = 8) -> str:
    """``names`` joined for an error message, cut after ``limit`` with a count of the rest."""
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def checkpoint_format(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (pickle-based) or ``"mindspore"`` (protobuf ``.ckpt``), from the first bytes.

    A ``.safetensors`` name is taken at its word, so a damaged file gets the safetensors reader's precise
    message. Anything else that starts like none of the three is refused here, in one line.
    """
    if path.suffix == ".safetensors":
        return "safetensors"
    if is_torch_pickle(path):
        return "torch"
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return "safetensors"
    if head[:1] == b"\x0a":  # Checkpoint.value: field 1, length-delimited (the codec notes below)
        return "mindspore"
    raise ConversionError(f"{path}: not a checkpoint format this converter reads (neither safetensors, a MindSpore "
                          ".ckpt nor a PyTorch file, judging by its first bytes)")


# ---------------------------------------------------------------------------------------------------------------------
# Pickle-based PyTorch files: only with --allow-pickle, and only then is torch imported
# ---------------------------------------------------------------------------------------------------------------------
def is_torch_pickle(path: Path) -> bool:
    """Torch's zip container or a bare pickle (protocol 2+), told apart from MindSpore's protobuf ``.ckpt``."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    return magic == b"PK\x03\x04" or magic[:1] == b"\x80"


def read_torch_pickle(path: str | Path, *, allow_pickle: bool) -> dict[str, TensorRef]:
    """The tensors of a ``torch.save`` file (a state dict, or a Lightning checkpoint's ``state_dict``)."""
    path = Path(path)
    if not allow_pickle:
        raise ConversionError(
            f"{path} is a pickle-based PyTorch file; unpickling can execute arbitrary code hidden in the file. "
            "Use the .safetensors version of these weights, or pass --allow-pickle if you trust the file's "
            "source (needs torch installed)")
    try:
        import torch
    except ImportError:
        raise ConversionError(f"--allow-pickle needs PyTorch to read {path}; install torch (the CPU wheel: "
                              "pip install torch==2.13.0) or use .safetensors weights") from None
    import pickle

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # e.g. Lightning checkpoints pickle callbacks; the user allowed full unpickling
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
        raise ConversionError(f"{path}: truncated or corrupt PyTorch file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a state dict, found {type(obj).__name__}")
    codes = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    refs = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.dtype not in codes:
            raise ConversionError(f"{path}: tensor '{name}' has dtype {value.dtype}, which this converter does not "
                                  "handle")

        def read(value=value) -> np.ndarray:
            value = value.detach().contiguous()
            return value.view(torch.int16).numpy().view(np.uint16) if value.dtype == torch.bfloat16 else value.numpy()

        refs[name] = TensorRef(name, codes[value.dtype], tuple(value.shape), path, read)
    return refs


# ---------------------------------------------------------------------------------------------------------------------
# MindSpore .ckpt
# ---------------------------------------------------------------------------------------------------------------------
# A .ckpt is a protobuf ``Checkpoint`` (mindspore/train/checkpoint.proto) written as a sequence of records,
# one per tensor slice: Checkpoint.value (1) -> Value {tag (1): name, tensor (2): TensorProto {dims (1):
# repeated int64, tensor_type (2): string, tensor_content (3): bytes}}. The few fields are decoded here
# rather than with MindSpore's generated classes: those force protobuf's pure-Python backend, which copies
# every tensor byte through Python, and they break if protobuf was imported before MindSpore. The tests
# check this codec against mindspore.save_checkpoint/load_checkpoint.
CKPT_CRC_TRAILER = 17  # b"crc_num" + 10-byte big-endian CRC32, appended by save_checkpoint(crc_check=True)
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


class _Cursor:
    """Reads protobuf keys, varints and length-delimited fields from a file, bounded by ``end``."""

    def __init__(self, handle, pos: int, end: int, path: Path):
        self.handle, self.pos, self.end, self.path = handle, pos, end, path

    def fail(self, what: str):
        raise ConversionError(f"{self.path}: {what} at byte {self.pos}")

    def varint(self) -> int:
        self.handle.seek(self.pos)
        value, shift = 0, 0
        while True:
            if self.pos >= self.end or shift > 63:
                self.fail("truncated or corrupt record")
            byte = self.handle.read(1)[0]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def key(self) -> tuple[int, int]:
        key = self.varint()
        return key >> 3, key & 7

    def length(self) -> tuple[int, int]:
        """A length-delimited field's (start, end) in the file; checked against the enclosing bound."""
        size = self.varint()
        if self.pos + size > self.end:
            self.fail(f"truncated: a field of {size} bytes runs past the end of its record")
        return self.pos, self.pos + size

    def read(self, start: int, end: int) -> bytes:
        self.handle.seek(start)
        return self.handle.read(end - start)

    def skip(self, wire: int) -> None:
        if wire == _WIRE_VARINT:
            self.varint()
        elif wire == _WIRE_LEN:
            self.pos = self.length()[1]
        elif wire in (_WIRE_I64, _WIRE_I32):
            self.pos += 8 if wire == _WIRE_I64 else 4
        else:
            self.fail(f"corrupt record (wire type {wire})")


def _parse_tensor(cursor: _Cursor, end: int) -> tuple[list[int], str, tuple[int, int]]:
    """TensorProto fields: (dims, tensor_type, (content start, content end) in the file)."""
    dims, type_name, content = [], "", (cursor.pos, cursor.pos)
    while cursor.pos < end:
        field_no, wire = cursor.key()
        if field_no == 1 and wire == _WIRE_VARINT:
            dims.append(cursor.varint())
        elif field_no == 1 and wire == _WIRE_LEN:  # packed encoding, legal for repeated scalars
            start, stop = cursor.length()
            inner = _Cursor(cursor.handle, start, stop, cursor.path)
            while inner.pos < stop:
                dims.append(inner.varint())
            cursor.pos = stop
        elif field_no == 2 and wire == _WIRE_LEN:
            start, stop = cursor.length()
            type_name, cursor.pos = cursor.read(start, stop).decode("utf-8", "replace"), stop
        elif field_no == 3 and wire == _WIRE_LEN:
            content = cursor.length()
            cursor.pos = content[1]
        else:
            cursor.skip(wire)
    return dims, type_name, content


def read_mindspore_ckpt(path: str | Path) -> dict[str, TensorRef]:
    """The tensors of a MindSpore ``.ckpt``, indexed without loading it (``read()`` memory-maps each tensor).

    Checks the record framing (a record cut off means truncation), the CRC trailer when present (one
    pass over the file), and that each tensor's slices add up to its shape. Strings and map tensors
    (training metadata, not weights) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    if is_torch_pickle(path):
        raise ConversionError(f"{path} is a PyTorch file, not a MindSpore checkpoint")
    size = path.stat().st_size
    spans: dict[str, list[tuple[int, int]]] = {}
    meta: dict[str, tuple[str, tuple[int, ...]]] = {}
    with open(path, "rb") as handle:
        end, stored_crc = size, None
        if size >= CKPT_CRC_TRAILER:
            handle.seek(size - CKPT_CRC_TRAILER)
            tail = handle.read(CKPT_CRC_TRAILER)
            if tail[:7] == b"crc_num":
                end, stored_crc = size - CKPT_CRC_TRAILER, int.from_bytes(tail[7:], "big")
        cursor, last = _Cursor(handle, 0, end, path), None
        while cursor.pos < end:
            if cursor.key() != (1, _WIRE_LEN):
                cursor.fail("corrupt or not a MindSpore checkpoint (unexpected field)")
            record_end = cursor.length()[1]
            record = _Cursor(handle, cursor.pos, record_end, path)
            name, tensor = None, None
            while record.pos < record_end:
                field_no, wire = record.key()
                if field_no == 1 and wire == _WIRE_LEN:
                    start, stop = record.length()
                    name, record.pos = record.read(start, stop).decode("utf-8", "replace"), stop
                elif field_no == 2 and wire == _WIRE_LEN:
                    start, stop = record.length()
                    tensor = _parse_tensor(_Cursor(handle, start, stop, path), stop)
                    record.pos = stop
                else:
                    record.skip(wire)
            cursor.pos = record_end
            if name is None or tensor is None or tensor[1] not in _FROM_MINDSPORE:
                last = name
                continue
            dims, type_name, content = tensor
            if name in spans and name != last:
                raise ConversionError(f"{path}: corrupt: tensor '{name}' appears twice")
            spans.setdefault(name, []).append(content)
            meta[name] = (_FROM_MINDSPORE[type_name], tuple(dims))
            last = name
        if stored_crc is not None:
            handle.seek(0)
            crc, left = 0, end
            while left:
                chunk = handle.read(min(left, 1 << 24))
                crc, left = zlib.crc32(chunk, crc), left - len(chunk)
            if crc != stored_crc:
                raise ConversionError(f"{path}: corrupt: CRC mismatch (stored {stored_crc}, computed {crc})")
    refs = {}
    for name, (code, shape) in meta.items():
        held = sum(stop - start for start, stop in spans[name])
        if shape == (0,) and held == itemsize(code):  # MindSpore writes scalars with dims [0]
            shape = ()
        if held != math.prod(shape) * itemsize(code):
            raise ConversionError(f"{path}: corrupt: tensor '{name}' {list(shape)} holds {held} bytes, expected "
                                  f"{math.prod(shape) * itemsize(code)}")
        refs[name] = TensorRef(name, code, shape, path, _ckpt_reader(path, spans[name], code, shape))
    return refs


def _ckpt_reader(path: Path, spans: list[tuple[int, int]], code: str, shape: tuple[int, ...]):
    def read() -> np.ndarray:
        if len(spans) == 1:
            return _mapped(path, spans[0][0], code, shape)()
        out = np.empty(shape, NUMPY_DTYPES[code])
        flat, at = memoryview(out.reshape(-1)).cast("B"), 0
        with open(path, "rb") as handle:
            for start, stop in spans:
                handle.seek(start)
                handle.readinto(flat[at:at + stop - start])
                at += stop - start
        return out

    return read
