"""CLIP: a Hugging Face ``CLIPModel`` folder to the folder PMG's scorer loads, checked against MindONE's model.

MindONE's ``CLIPModel.from_pretrained`` reads Hugging Face names and layouts, so the conversion keeps
them; what it adds is the check that the weights fill exactly the parameters of the MindONE model built
from ``config.json`` (torch-free safetensors, dtype change, pickle refused, buffers dropped) and an
atomic, complete output folder that :func:`research.pmg.models.clip.build_clip` loads via
``models.clip.path``.
"""
from __future__ import annotations

from pathlib import Path

from ckpt_convert.sources import ConversionError, read_hf_weights
from ckpt_convert.targets import (Summary, atomic_outputs, copy_files, identity_targets, mindone_spec, out_dtype,
                                  read_json, resolve, set_torch_dtype, write_json, write_safetensors)

# What a CLIP folder needs besides config and weights: the BPE tokenizer and the image preprocessing.
CLIP_SIDE_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json")
# Registered buffers that older transformers versions saved with the weights; the model rebuilds them.
_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def ignore_buffers(name: str) -> str | None:
    return "position-id buffers (rebuilt by the model)" if name.split("/")[-1] in _BUFFERS else None


def convert(src: str | Path, dst: str | Path, *, dtype: str = "keep", allow_pickle: bool = False,
            overwrite: bool = False) -> Summary:
    """Convert the HF ``CLIPModel`` folder ``src`` into ``dst`` (config, ``model.safetensors``, tokenizer files)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConversionError(f"{src}: not a folder (expected a Hugging Face CLIPModel folder)")
    config = read_json(src / "config.json")
    archs = config.get("architectures") or []
    if config.get("model_type") != "clip" or (archs and "CLIPModel" not in archs):
        raise ConversionError(f"{src / 'config.json'}: wrong architecture: model_type {config.get('model_type')!r}, "
                              f"architectures {archs}; expected a CLIP model (model_type 'clip', CLIPModel)")
    missing = [name for name in ("vocab.json", "merges.txt") if not (src / name).is_file()]
    if missing:
        raise ConversionError(f"{src}: no {' or '.join(missing)}: PMG's CLIP scorer needs the tokenizer files")
    sources = read_hf_weights(src, "model", "pytorch_model", allow_pickle=allow_pickle)
    spec = mindone_spec("transformers", "CLIPModel", config)
    resolved, ignored = resolve(identity_targets(spec), sources, ignore=ignore_buffers, dtype=out_dtype(dtype),
                                what=f"clip {src}")
    summary = Summary(f"clip {src} -> MindONE CLIPModel folder", ignored=ignored)
    with atomic_outputs(dst, overwrite=overwrite, folders=True) as (tmp,):
        write_json(tmp / "config.json", set_torch_dtype(config, resolved))
        write_safetensors(tmp / "model.safetensors", resolved, summary)
        copy_files(src, tmp, CLIP_SIDE_FILES)
    summary.files = [dst]
    return summary
