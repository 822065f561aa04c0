"""Stable Diffusion 1.x / 2.x: a diffusers folder or a single-file checkpoint to the folder PMG's generator loads.

The output is a diffusers-format folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``, ``model_index.json``) that MindONE's ``from_pretrained`` reads and
:func:`research.pmg.models.diffusion.build_diffusion` loads via ``models.diffusion.path``. Each model's
weights are checked against the MindONE model built from its ``config.json``.

A single-file checkpoint (``v1-5-pruned-emaonly.safetensors``, SD 2.1's ``v2-1_768-ema-pruned.safetensors``)
uses the original CompVis/Stability names. It carries no configuration, so ``config`` names a diffusers
folder of the same model for the config files, tokenizer and scheduler (its weights are not read). The
name correspondence below is derived from the UNet/VAE configs, mirrors ``diffusers``' single-file
conversion (``convert_ldm_unet_checkpoint`` and friends; the tests check it against MindONE's copy) and
is explicit, so every original tensor is accounted for: used, or ignored for a stated reason.

MindONE's own checkpoints (``sd_v2-1_768_v-061732d1.ckpt``, ``sd_v1.5-d0ab7146.ckpt``: what the ``ldm`` models of
mindone's examples/stable_diffusion_v2, and the official PMG code that vendors them, load) are MindSpore ``.ckpt``
files under the ``ldm`` Cells' parameter names: the original names with MindSpore's layer conventions
(:func:`mindone_ldm_name`). They convert the same way, with ``--config`` naming the diffusers folder of the model.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ckpt_convert.sources import (ConversionError, TensorRef, checkpoint_format, read_hf_weights, read_mindspore_ckpt,
                                  read_safetensors, read_torch_pickle, short_list)
from ckpt_convert.targets import (Summary, Target, atomic_outputs, copy_files, identity_targets, mindone_spec,
                                  out_dtype, read_json, resolve, set_torch_dtype, write_json, write_mindspore_ckpt,
                                  write_safetensors)

# folder -> (library, class, safetensors stem, pickle stem)
MODELS = {
    "unet": ("diffusers", "UNet2DConditionModel", "diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vae": ("diffusers", "AutoencoderKL", "diffusion_pytorch_model", "diffusion_pytorch_model"),
    "text_encoder": ("transformers", "CLIPTextModel", "model", "pytorch_model"),
}
COPIED = ("tokenizer", "scheduler")  # folders taken over unchanged
_OUTPUT_WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                   "text_encoder": "model.safetensors"}
# Old diffusers VAEs stored attention under these names; diffusers (and MindONE) still load them.
_VAE_ATTENTION_ALIASES = {"to_q.weight": "query.weight", "to_q.bias": "query.bias", "to_k.weight": "key.weight",
                          "to_k.bias": "key.bias", "to_v.weight": "value.weight", "to_v.bias": "value.bias",
                          "to_out.0.weight": "proj_attn.weight", "to_out.0.bias": "proj_attn.bias"}


def _model_config(folder: Path, name: str) -> dict:
    """A model's config.json, checked to be the class PMG's generator builds."""
    library, class_name = MODELS[name][:2]
    config = read_json(folder / name / "config.json")
    found = config.get("_class_name") if library == "diffusers" else (config.get("architectures") or [class_name])[0]
    if found != class_name:
        raise ConversionError(f"{folder / name / 'config.json'}: wrong architecture: {found!r}, expected {class_name} "
                              "(Stable Diffusion 1.x/2.x)")
    if name == "unet" and (config.get("addition_embed_type") or config.get("class_embed_type")):
        raise ConversionError(f"{folder / 'unet/config.json'}: UNets with extra conditioning (SDXL, upscalers) are not "
                              "supported; PMG uses Stable Diffusion 1.x/2.x")
    return config


def _check_layout(folder: Path, role: str) -> dict:
    for name in (*MODELS, *COPIED):
        if not (folder / name).is_dir():
            raise ConversionError(f"{folder}: no '{name}' folder ({role} must be a diffusers-format Stable Diffusion "
                                  "folder: unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    extra = sorted(k for k in index if k.endswith("_2") and isinstance(index[k], list) and index[k][0])
    if extra:
        raise ConversionError(f"{folder / 'model_index.json'}: has {', '.join(extra)} (SDXL?); PMG uses Stable "
                              "Diffusion 1.x/2.x")
    return index


# ---------------------------------------------------------------------------------------------------------------------
# Original (CompVis / Stability) single-file names
# ---------------------------------------------------------------------------------------------------------------------
_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_RESNET = (("conv_shortcut", "nin_shortcut"),)
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
_NO_RENAME: tuple = ()


def _unet_prefixes(config: dict) -> list[tuple[str, str, tuple]]:
    """(diffusers prefix, original prefix, renames inside) for every UNet block, from the block layout.

    The original UNet numbers its blocks flat: ``input_blocks.k`` runs through each level's resnets
    (with their attention as ``.1``) and the level's downsampler; ``output_blocks`` likewise with one
    more resnet per level and the upsampler after the last one.
    """
    per_level = config.get("layers_per_block", 2)
    if not isinstance(per_level, int):
        raise ConversionError("unet/config.json: per-level layers_per_block lists are not supported for single files")
    down, up = config["down_block_types"], config["up_block_types"]
    pairs = [("time_embedding.linear_1.", "time_embed.0.", _NO_RENAME),
             ("time_embedding.linear_2.", "time_embed.2.", _NO_RENAME),
             ("conv_in.", "input_blocks.0.0.", _NO_RENAME), ("conv_norm_out.", "out.0.", _NO_RENAME),
             ("conv_out.", "out.2.", _NO_RENAME),
             ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
             ("mid_block.attentions.0.", "middle_block.1.", _NO_RENAME),
             ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET)]
    block = 1
    for i, kind in enumerate(down):
        for j in range(per_level):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", _UNET_RESNET))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1.", _NO_RENAME))
            block += 1
        if i < len(down) - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{block}.0.op.", _NO_RENAME))
            block += 1
    block = 0
    for i, kind in enumerate(up):
        for j in range(per_level + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", _UNET_RESNET))
            if "CrossAttn" in kind:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1.", _NO_RENAME))
            block += 1
        if i < len(up) - 1:
            slot = 2 if "CrossAttn" in kind else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{block - 1}.{slot}.", _NO_RENAME))
    return pairs


def _vae_prefixes(config: dict) -> list[tuple[str, str, tuple]]:
    """The same for the VAE: the original decoder numbers its up-levels from the bottom."""
    levels, per_level = len(config["down_block_types"]), config.get("layers_per_block", 1)
    pairs = [(f"{part}.{name}.", f"{part}.{name}.", _NO_RENAME) for part in ("encoder", "decoder")
             for name in ("conv_in", "conv_out")]
    pairs += [(f"{part}.conv_norm_out.", f"{part}.norm_out.", _NO_RENAME) for part in ("encoder", "decoder")]
    pairs += [(f"{name}.", f"{name}.", _NO_RENAME) for name in ("quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", _VAE_RESNET) for j in range(2)]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION))
    for i in range(levels):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET)
                  for j in range(per_level)]
        pairs += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.", _VAE_RESNET)
                  for j in range(per_level + 1)]
        if i < levels - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.",
                          _NO_RENAME))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{levels - 1 - i}.upsample.conv.",
                          _NO_RENAME))
    return pairs


def _translate(name: str, prefixes: list[tuple[str, str, tuple]], what: str) -> str:
    """The original name of the diffusers parameter ``name`` (longest matching block prefix, then renames)."""
    matches = [p for p in prefixes if name.startswith(p[0])]
    if not matches:
        raise ConversionError(f"{what}: no original single-file name for '{name}' (an architecture this converter "
                              "does not know)")
    new, old, renames = max(matches, key=lambda p: len(p[0]))
    rest = name[len(new):]
    for diffusers_part, original_part in renames:
        if rest.startswith(diffusers_part + "."):
            rest = original_part + rest[len(diffusers_part):]
            break
    return old + rest


def unet_original_names(spec: dict[str, tuple[int, ...]], config: dict) -> dict[str, str]:
    """diffusers UNet parameter -> original name below ``model.diffusion_model.``."""
    prefixes = _unet_prefixes(config)
    return {name: _translate(name, prefixes, "unet") for name in spec}


def vae_original_names(spec: dict[str, tuple[int, ...]], config: dict) -> dict[str, str]:
    """diffusers VAE parameter -> original name below ``first_stage_model.``."""
    prefixes = _vae_prefixes(config)
    return {name: _translate(name, prefixes, "vae") for name in spec}


_VAE_CONV_ATTENTION = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")  # 1x1 convs originally, linear in diffusers

_OPEN_CLIP = "cond_stage_model.model."
_OPEN_CLIP_LAYER = (("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                    ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj."))
_OPEN_CLIP_FIXED = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                    "text_model.embeddings.position_embedding.weight": "positional_embedding",
                    "text_model.final_layer_norm.weight": "ln_final.weight",
                    "text_model.final_layer_norm.bias": "ln_final.bias"}


def open_clip_source(name: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...], int | None]:
    """SD 2's OpenCLIP text tower: (original name, original shape, q/k/v index into the fused in_proj or None)."""
    if name in _OPEN_CLIP_FIXED:
        return _OPEN_CLIP + _OPEN_CLIP_FIXED[name], shape, None
    match = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", name)
    if match:
        layer, rest = match.groups()
        base = f"{_OPEN_CLIP}transformer.resblocks.{layer}."
        qkv = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qkv:
            return base + f"attn.in_proj_{qkv[2]}", (3 * shape[0], *shape[1:]), "qkv".index(qkv[1])
        for new, old in _OPEN_CLIP_LAYER:
            if rest.startswith(new):
                return base + old + rest[len(new):], shape, None
    raise ConversionError(f"text_encoder: no OpenCLIP single-file name for '{name}'")


# ---------------------------------------------------------------------------------------------------------------------
# MindONE's ldm names (a MindSpore port of the original model, saved by mindspore.save_checkpoint)
# ---------------------------------------------------------------------------------------------------------------------
# Applied in order to an original name, each at most once. The port differs from the original in three ways:
# its UNet wraps every convolution in a cell that holds it as ``.conv`` (and splits a ResBlock's in_layers /
# out_layers Sequential into ``*_norm`` and ``*_conv``); its text encoder (``FrozenCLIPEmbedder``'s TextEncoder, for
# SD 1.x's CLIP and SD 2.x's OpenCLIP tower alike) has its own module names over OpenCLIP's fused q/k/v layout;
# and MindSpore's LayerNorm/GroupNorm call their parameters gamma/beta (:data:`_LDM_NORM`).
_LDM_RENAMES = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"^(model\.diffusion_model\.input_blocks\.0\.0)\.", r"\1.conv."),
    (r"\.(in|out)_layers\.0\.", r".\1_layers_norm."),
    (r"\.in_layers\.2\.", ".in_layers_conv.conv."),
    (r"\.out_layers\.3\.", ".out_layers_conv.conv."),
    (r"^(model\.diffusion_model\.(?:.+\.(?:skip_connection|op)|output_blocks\.\d+\.\d+\.conv|out\.2))\.", r"\1.conv."),
    (r"^cond_stage_model\.model\.token_embedding\.weight$", "cond_stage_model.transformer.embedding_table"),
    (r"^cond_stage_model\.model\.(positional_embedding$|ln_final\.)", r"cond_stage_model.transformer.\1"),
    (r"^cond_stage_model\.model\.transformer\.resblocks\.(\d+)\.(?:mlp\.)?",
     r"cond_stage_model.transformer.transformer_layer.resblocks.\1."),
    (r"(\.resblocks\.\d+\.attn)\.in_proj_(weight|bias)$", r"\1.attn.in_proj.\2"),
    (r"(\.resblocks\.\d+\.attn)\.out_proj\.", r"\1.attn.out_proj."),
))
_LDM_NORM = re.compile(r"(\.(?:norm\d?|norm_out|in_layers_norm|out_layers_norm|ln_\d|ln_final)|"
                       r"^model\.diffusion_model\.out\.0)\.(weight|bias)$")
_LDM_TEXT_LAYER = re.compile(  # an OpenCLIP text layer, original or MindONE name
    r"cond_stage_model\.(?:model\.transformer|transformer\.transformer_layer)\.resblocks\.(\d+)\.")


def mindone_ldm_name(original: str) -> str:
    """The MindONE ``ldm`` parameter name of an original (CompVis/Stability, OpenCLIP text tower) full name."""
    for pattern, replacement in _LDM_RENAMES:
        original = pattern.sub(replacement, original, count=1)
    return _LDM_NORM.sub(lambda m: m[1] + (".gamma" if m[2] == "weight" else ".beta"), original)


def _check_mindone(sources: dict[str, TensorRef], src: Path) -> None:
    """A MindSpore .ckpt must be a Stable Diffusion of MindONE's ldm (else the plan would list every name)."""
    parts = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")
    absent = [part + "*" for part in parts if not any(name.startswith(part) for name in sources)]
    if absent:
        found = sorted({name.split(".", 1)[0] for name in sources})
        raise ConversionError(f"{src}: a MindSpore checkpoint without MindONE Stable Diffusion parameters "
                              f"({', '.join(absent)} absent; top-level names: {short_list(found, 5) or 'none'}); "
                              "only MindONE's ldm Stable Diffusion .ckpt (e.g. sd_v2-1_768_v-*.ckpt) converts here")


def _rows(index: int):
    return lambda fused: np.split(fused, 3, axis=0)[index]


_SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                     "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2", "logvar"}


def mindone_ckpt_targets(specs: dict[str, dict], configs: dict[str, dict]) -> list[Target]:
    """The plan for a MindONE ldm ``.ckpt``: one target per diffusers parameter (``<model>/<name>``) and its source."""
    return _single_file_targets({}, specs, configs, ema=False, mindone=True)


def _folder_ignore(name: str) -> str | None:
    return "position-id buffers (rebuilt by the model)" if name.endswith("position_ids") else None


def _single_file_ignore(ema: bool, text_layers: int):
    def ignore(name: str) -> str | None:
        if name in _SCHEDULE_BUFFERS:
            return "noise-schedule buffers (the scheduler config defines the schedule)"
        if name in ("model_ema.decay", "model_ema.num_updates"):
            return "EMA bookkeeping"
        if name.startswith("model_ema.") and not ema:
            return "EMA copy of the UNet (pass --ema to convert it instead)"
        if name.startswith("model.diffusion_model.") and ema:
            return "non-EMA UNet (--ema converts the EMA copy)"
        if name.endswith("text_model.embeddings.position_ids"):
            return "position-id buffers (rebuilt by the model)"
        if name in (_OPEN_CLIP + "text_projection", _OPEN_CLIP + "logit_scale", _OPEN_CLIP + "attn_mask"):
            return "OpenCLIP projection/scale/mask (SD 2 uses the text tower's hidden states only)"
        layer = _LDM_TEXT_LAYER.match(name)
        if layer and int(layer[1]) >= text_layers:
            return "OpenCLIP layers after the one SD 2 takes its text features from"
        return None

    return ignore


def _single_file_targets(sources: dict[str, TensorRef], specs: dict[str, dict], configs: dict[str, dict],
                         ema: bool, mindone: bool = False) -> list[Target]:
    """The plan for a single file: original names, or with ``mindone`` MindONE's ldm names of them."""
    targets = []
    named = mindone_ldm_name if mindone else str
    for name, original in unet_original_names(specs["unet"], configs["unet"]).items():
        full = named("model.diffusion_model." + original)
        if ema:  # the EMA copy flattens the name: model_ema.diffusion_modelinput_blocks00weight
            full = "model_ema." + ("diffusion_model." + original).replace(".", "")
        targets.append(Target(f"unet/{name}", specs["unet"][name], ((full, specs["unet"][name]),)))
    for name, original in vae_original_names(specs["vae"], configs["vae"]).items():
        shape = specs["vae"][name]
        source_shape = shape + (1, 1) if _VAE_CONV_ATTENTION.search(original) else shape
        targets.append(Target(f"vae/{name}", shape, ((named("first_stage_model." + original), source_shape),)))
    # MindONE's text encoder has OpenCLIP's layout (fused q/k/v) for SD 1.x's CLIP too
    open_clip = mindone or any(key.startswith(_OPEN_CLIP) for key in sources)
    for name, shape in specs["text_encoder"].items():
        if open_clip:
            original, source_shape, index = open_clip_source(name, shape)
            targets.append(Target(f"text_encoder/{name}", shape, ((named(original), source_shape),),
                                  None if index is None else _rows(index)))
        else:
            original = "cond_stage_model.transformer." + name
            if original not in sources and name.startswith("text_model."):  # written by older transformers
                original = "cond_stage_model.transformer." + name[len("text_model."):]
            targets.append(Target(f"text_encoder/{name}", shape, ((original, shape),)))
    return targets


# ---------------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------------
def convert(src: str | Path, dst: str | Path, *, config: str | Path | None = None, dtype: str = "keep",
            ema: bool = False, variant: str = "", ckpt: bool = False, allow_pickle: bool = False,
            overwrite: bool = False) -> Summary:
    """Convert a diffusers folder or a single-file checkpoint ``src`` into the diffusers folder ``dst``.

    A single file is an original-layout ``.safetensors`` (or, with ``allow_pickle``, a PyTorch file) or MindONE's
    ldm ``.ckpt``; which one is told from its first bytes.

    ``config`` (single files only) is a diffusers folder of the same model providing the config files,
    tokenizer and scheduler. ``variant`` picks e.g. the ``fp16`` weight files of a diffusers folder;
    ``ema`` the EMA UNet of a single file that holds both. ``ckpt`` also writes each model as a MindSpore
    ``.ckpt`` under the MindONE Cell's own parameter names (``<model>/<weights name>.ckpt``), which
    ``mindspore.load_checkpoint(file, net)`` loads without any name mapping.
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        if config is not None or ema:
            raise ConversionError("--config and --ema are for single-file checkpoints; a diffusers folder brings its "
                                  "own configs")
        layout = src
    elif src.is_file():
        if config is None:
            raise ConversionError(
                f"{src} is a single-file checkpoint, which carries no configuration: pass --config with a "
                "diffusers-format folder of the same model (its config.json files, tokenizer/ and scheduler/; its "
                "weights are not needed), e.g. the Hugging Face repository the file came from")
        if variant:
            raise ConversionError("--variant selects weight files inside a diffusers folder, not a single file")
        layout = Path(config)
    else:
        raise ConversionError(f"{src}: not found")
    index = _check_layout(layout, "--src" if src.is_dir() else "--config")
    configs = {name: _model_config(layout, name) for name in MODELS}
    specs = {name: mindone_spec(MODELS[name][0], MODELS[name][1], configs[name]) for name in MODELS}

    if src.is_dir():
        sources, targets = {}, []
        for name, (_, _, stem, pickle_stem) in MODELS.items():
            found = read_hf_weights(src / name, stem, pickle_stem, allow_pickle=allow_pickle, variant=variant)
            found = {f"{name}/{key}": ref for key, ref in found.items()}
            sources.update(found)
            aliases = _VAE_ATTENTION_ALIASES if name == "vae" else None
            targets += identity_targets(specs[name], f"{name}/", aliases, found)
        ignore = _folder_ignore
    else:
        kind = checkpoint_format(src)
        if kind == "mindspore":  # protobuf, not pickle: read without --allow-pickle
            sources = read_mindspore_ckpt(src)
            _check_mindone(sources, src)
        elif kind == "torch":
            sources = read_torch_pickle(src, allow_pickle=allow_pickle)
        else:
            sources = read_safetensors(src)
        if ema and not any(key.startswith("model_ema.") for key in sources):
            raise ConversionError(f"{src}: --ema given but the file has no EMA weights (model_ema.*)")
        targets = _single_file_targets(sources, specs, configs, ema, mindone=kind == "mindspore")
        ignore = _single_file_ignore(ema, configs["text_encoder"].get("num_hidden_layers", 12))
    resolved, ignored = resolve(targets, sources, ignore=ignore, dtype=out_dtype(dtype), what=f"sd {src}")

    summary = Summary(f"sd {src} -> diffusers folder for MindONE", ignored=ignored)
    with atomic_outputs(dst, overwrite=overwrite, folders=True) as (tmp,):
        for name in MODELS:
            items = [item for item in resolved if item.target.name.startswith(name + "/")]
            (tmp / name).mkdir()
            model_config = set_torch_dtype(configs[name], items) if MODELS[name][0] == "transformers" else configs[name]
            write_json(tmp / name / "config.json", model_config)
            write_safetensors(tmp / name / _OUTPUT_WEIGHTS[name], items, summary, rename=_unprefix)
            if ckpt:
                names = specs[name].mindspore_names
                write_mindspore_ckpt(tmp / name / Path(_OUTPUT_WEIGHTS[name]).with_suffix(".ckpt").name, items, None,
                                     rename=lambda target, names=names: names[_unprefix(target)])
        for name in COPIED:
            (tmp / name).mkdir()
            copy_files(layout / name, tmp / name, sorted(p.name for p in (layout / name).iterdir()))
        write_json(tmp / "model_index.json", _model_index(index, layout))
    summary.files = [dst]
    return summary


def _unprefix(name: str) -> str:
    return name.split("/", 1)[1]


def _model_index(index: dict, layout: Path) -> dict:
    """model_index.json naming only the parts written (the safety checker and feature extractor are dropped).

    A config folder without one gets the standard Stable Diffusion pipeline index.
    """
    if not index:
        scheduler = read_json(layout / "scheduler" / "scheduler_config.json").get("_class_name", "DDPMScheduler")
        index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                 "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", scheduler]}
    out = {key: value for key, value in index.items() if not isinstance(value, list) or key in (*MODELS, *COPIED)}
    for key, value in index.items():
        if isinstance(value, list) and key not in out:
            out[key] = [None, None]
    if "requires_safety_checker" in out:
        out["requires_safety_checker"] = False
    return out
