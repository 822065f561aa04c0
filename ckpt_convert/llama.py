"""Llama 2: a Hugging Face ``LlamaForCausalLM`` folder to the MindFormers ``.ckpt`` PMG loads, and back.

The output is what :func:`research.pmg.models.llama.build_llama` loads through ``models.llm.checkpoint``:
MindFormers parameter names, and the HF q/k weights unchanged (MindFormers applies RoPE in the same
rotate-half layout as Hugging Face, so no head permutation is needed; the logits parity test proves
it). Next to ``X.ckpt`` the converter writes ``X.yaml``, the ``models.llm`` section with the
architecture read from ``config.json``, so nobody copies sizes by hand.

Neither MindFormers nor torch is imported: the parameter list is derived from the config here, and the
tests check it against the real MindFormers model and ``LlamaForCausalLM.convert_name``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ckpt_convert.sources import (ConversionError, TensorRef, is_torch_pickle, itemsize, read_hf_weights,
                                  read_mindspore_ckpt)
from ckpt_convert.targets import (Summary, Target, atomic_outputs, copy_files, out_dtype, resolve, set_torch_dtype,
                                  write_json, write_mindspore_ckpt, write_safetensors)

# Files of a Hugging Face Llama folder besides the weights that the reverse direction carries over.
HF_SIDE_FILES = ("generation_config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json")
HF_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")
_TRAINING_STATE = ("adam_m.", "adam_v.", "accu_grads.", "global_step", "epoch_num", "step_num", "learning_rate",
                   "scale_sense", "current_iterator_step", "last_overflow_iterator_step", "loss_scale")


@dataclass(frozen=True)
class LlamaArch:
    """The architecture fields of an HF Llama ``config.json`` that decide parameter names and shapes."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def config_path(path: str | Path) -> Path:
    """``path`` itself if it is a file, else ``path/config.json``."""
    path = Path(path)
    return path if path.is_file() else path / "config.json"


def read_arch(path: str | Path) -> tuple[LlamaArch, dict]:
    """The :class:`LlamaArch` of an HF ``config.json`` (or a folder holding one) and the raw config.

    Anything that is not a plain Llama 2 style decoder (another model type, RoPE scaling, biases,
    another activation) is refused: the MindFormers model PMG builds could not reproduce it.
    """
    path = config_path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: not found (expected a Hugging Face LlamaForCausalLM folder with config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON: {exc}") from None
    archs = raw.get("architectures") or []
    if raw.get("model_type") != "llama" or (archs and "LlamaForCausalLM" not in archs):
        raise ConversionError(f"{path}: wrong architecture: model_type {raw.get('model_type')!r}, architectures "
                              f"{archs}; expected a Llama model (model_type 'llama', LlamaForCausalLM)")
    unsupported = [f"{key}={raw[key]!r}" for key, ok in (
        ("rope_scaling", None), ("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu"))
        if key in raw and raw[key] != ok]
    heads, hidden = raw["num_attention_heads"], raw["hidden_size"]
    if raw.get("head_dim") not in (None, hidden // heads):
        unsupported.append(f"head_dim={raw['head_dim']} (not hidden_size / num_attention_heads)")
    if unsupported:
        raise ConversionError(f"{path}: not supported by the MindFormers Llama PMG builds: {', '.join(unsupported)}")

    def token(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) else None

    arch = LlamaArch(
        vocab_size=raw["vocab_size"], hidden_size=hidden, num_layers=raw["num_hidden_layers"], num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads, intermediate_size=raw["intermediate_size"],
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=float(raw.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=token("bos_token_id"), eos_token_id=token("eos_token_id"), pad_token_id=token("pad_token_id"))
    return arch, raw


# ---------------------------------------------------------------------------------------------------------------------
# Parameter correspondence
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pair:
    """One MindFormers parameter and the HF parameter(s) it is made of (several when concatenated)."""

    mf: str
    shape: tuple[int, ...]
    hf: tuple[tuple[str, tuple[int, ...]], ...]
    concat: str = ""  # "", "qkv" or "ffn"


def _pairs(arch: LlamaArch, qkv_concat: bool) -> list[_Pair]:
    """Every MindFormers ``LlamaForCausalLM`` parameter, in model order, with its HF source(s)."""
    v, h, i, kv = arch.vocab_size, arch.hidden_size, arch.intermediate_size, arch.kv_dim
    pairs = [_Pair("model.tok_embeddings.embedding_weight", (v, h), (("model.embed_tokens.weight", (v, h)),))]
    for n in range(arch.num_layers):
        hf, mf = f"model.layers.{n}.", f"model.layers.{n}."
        q, k, vv = (f"{hf}self_attn.q_proj.weight", (h, h)), (f"{hf}self_attn.k_proj.weight", (kv, h)), \
            (f"{hf}self_attn.v_proj.weight", (kv, h))
        gate, up = (f"{hf}mlp.gate_proj.weight", (i, h)), (f"{hf}mlp.up_proj.weight", (i, h))
        pairs += [_Pair(f"{mf}attention_norm.weight", (h,), ((f"{hf}input_layernorm.weight", (h,)),)),
                  _Pair(f"{mf}ffn_norm.weight", (h,), ((f"{hf}post_attention_layernorm.weight", (h,)),))]
        if qkv_concat:
            pairs.append(_Pair(f"{mf}attention.w_qkv.weight", (h + 2 * kv, h), (q, k, vv), "qkv"))
        else:
            pairs += [_Pair(f"{mf}attention.w{x}.weight", src[1], (src,)) for x, src in zip("qkv", (q, k, vv))]
        pairs.append(_Pair(f"{mf}attention.wo.weight", (h, h), ((f"{hf}self_attn.o_proj.weight", (h, h)),)))
        if qkv_concat:
            pairs.append(_Pair(f"{mf}feed_forward.w_gate_hidden.weight", (2 * i, h), (gate, up), "ffn"))
        else:
            pairs += [_Pair(f"{mf}feed_forward.w1.weight", (i, h), (gate,)),
                      _Pair(f"{mf}feed_forward.w3.weight", (i, h), (up,))]
        pairs.append(_Pair(f"{mf}feed_forward.w2.weight", (h, i), ((f"{hf}mlp.down_proj.weight", (h, i)),)))
    pairs.append(_Pair("model.norm_out.weight", (h,), (("model.norm.weight", (h,)),)))
    pairs.append(_Pair("lm_head.weight", (v, h), (("lm_head.weight", (v, h)),)))
    return pairs


def mindformers_parameters(arch: LlamaArch, qkv_concat: bool = False) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the MindFormers ``LlamaForCausalLM`` parameters for ``arch``."""
    return {pair.mf: pair.shape for pair in _pairs(arch, qkv_concat)}


def hf_parameters(arch: LlamaArch) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the HF ``LlamaForCausalLM`` state dict for ``arch`` (no ``lm_head`` when tied)."""
    out = {name: shape for pair in _pairs(arch, False) for name, shape in pair.hf}
    if arch.tie_word_embeddings:
        del out["lm_head.weight"]
    return out


# MindFormers' fused layouts (mindformers.utils.convert_utils.qkv_concat_hf2mg / ffn_concat_hf2mg): the
# q/k/v rows are grouped per key/value head, gate and up rows interleaved, so a tensor-parallel split
# along the rows keeps whole heads together.
def _qkv_concat(arch: LlamaArch):
    group = arch.num_heads // arch.num_kv_heads * arch.head_dim

    def combine(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        parts = [w.reshape(arch.num_kv_heads, -1, arch.hidden_size) for w in (q, k, v)]
        return np.concatenate(parts, axis=1).reshape(-1, arch.hidden_size)

    def split(index: int):
        bounds = (0, group, group + arch.head_dim, group + 2 * arch.head_dim)

        def part(w: np.ndarray) -> np.ndarray:
            grouped = w.reshape(arch.num_kv_heads, bounds[3], arch.hidden_size)
            return grouped[:, bounds[index]:bounds[index + 1]].reshape(-1, arch.hidden_size)

        return part

    return combine, split


def _ffn_concat(arch: LlamaArch):
    def combine(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return np.stack([gate, up], axis=1).reshape(-1, arch.hidden_size)

    def split(index: int):
        return lambda w: w.reshape(arch.intermediate_size, 2, arch.hidden_size)[:, index]

    return combine, split


def _forward_targets(arch: LlamaArch, qkv_concat: bool, sources: dict[str, TensorRef]) -> list[Target]:
    tied = arch.tie_word_embeddings and "lm_head.weight" not in sources
    targets = []
    for pair in _pairs(arch, qkv_concat):
        hf = (("model.embed_tokens.weight", pair.shape),) if tied and pair.mf == "lm_head.weight" else pair.hf
        combine = {"qkv": _qkv_concat, "ffn": _ffn_concat}[pair.concat](arch)[0] if pair.concat else None
        targets.append(Target(pair.mf, pair.shape, hf, combine))
    return targets


def _reverse_targets(arch: LlamaArch, qkv_concat: bool) -> list[Target]:
    targets = []
    for pair in _pairs(arch, qkv_concat):
        split = {"qkv": _qkv_concat, "ffn": _ffn_concat}[pair.concat](arch)[1] if pair.concat else None
        for index, (name, shape) in enumerate(pair.hf):
            if name == "lm_head.weight" and arch.tie_word_embeddings:
                continue
            targets.append(Target(name, shape, ((pair.mf, pair.shape),), split(index) if split else None))
    return targets


def _ignore_forward(name: str) -> str | None:
    if name.endswith("rotary_emb.inv_freq"):
        return "RoPE frequencies (recomputed by the model)"
    return None


def _ignore_reverse(arch: LlamaArch):
    def ignore(name: str) -> str | None:
        if name.startswith(_TRAINING_STATE):
            return "training state (optimizer moments, step counters)"
        if name == "lm_head.weight" and arch.tie_word_embeddings:
            return "lm_head (tied to the embeddings in the HF config)"
        return None

    return ignore


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------------
def llm_config_yaml(arch: LlamaArch, checkpoint: str | Path, tokenizer: str | Path | None, source: str | Path,
                    qkv_concat: bool = False) -> str:
    """The ``models.llm`` config section for ``arch``, validated by PMG's own config class.

    ``n_kv_heads`` is 0 when it equals ``num_heads`` (the config's "no grouped-query attention").
    """
    from research.pmg.config import LlamaConfig

    fields = dict(checkpoint=str(Path(checkpoint).resolve()),
                  tokenizer=str(Path(tokenizer).resolve()) if tokenizer else "",
                  vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, num_layers=arch.num_layers,
                  num_heads=arch.num_heads, n_kv_heads=0 if arch.num_kv_heads == arch.num_heads else arch.num_kv_heads,
                  intermediate_size=arch.intermediate_size, rms_norm_eps=arch.rms_norm_eps, rope_theta=arch.rope_theta)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(arch, key) is not None:
            fields[key] = getattr(arch, key)
    LlamaConfig(**fields).validate(f"{source}: ")
    header = [f"# models.llm for {Path(source).resolve()}, written by `python -m ckpt_convert llama`.",
              "# Paste it into your config (or pass the values as models.llm.<field>=... overrides)."]
    if qkv_concat:
        header.append("# This checkpoint fuses q/k/v and gate/up (qkv_concat): it is for MindFormers configs with "
                      "qkv_concat: true; PMG's own Llama builder expects the unfused layout.")
    return "\n".join(header) + "\n" + yaml.safe_dump({"models": {"llm": fields}}, sort_keys=False)


def to_mindformers(src: str | Path, dst: str | Path, *, dtype: str = "keep", qkv_concat: bool = False,
                   allow_pickle: bool = False, overwrite: bool = False) -> Summary:
    """Convert an HF Llama folder ``src`` into the MindFormers checkpoint ``dst`` (``.ckpt``) plus ``dst.yaml``."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".ckpt":
        raise ConversionError(f"--dst must name a .ckpt file, got {dst}")
    arch, _ = read_arch(src)
    sources = read_hf_weights(src, "model", "pytorch_model", allow_pickle=allow_pickle)
    resolved, ignored = resolve(_forward_targets(arch, qkv_concat, sources), sources, ignore=_ignore_forward,
                                dtype=out_dtype(dtype), what=f"llama {src}")
    tokenizer = src / "tokenizer.model" if (src / "tokenizer.model").is_file() else None
    sidecar = dst.with_suffix(".yaml")
    summary = Summary(f"llama {src} -> MindFormers", ignored=ignored)
    with atomic_outputs(dst, sidecar, overwrite=overwrite) as (tmp_ckpt, tmp_yaml):
        write_mindspore_ckpt(tmp_ckpt, resolved, summary)
        tmp_yaml.write_text(llm_config_yaml(arch, dst, tokenizer, src, qkv_concat), encoding="utf-8")
    summary.files = [dst, sidecar]
    if tokenizer is None:
        summary.notes.append(f"{src} has no tokenizer.model: set models.llm.tokenizer in {sidecar.name}")
    return summary


def to_hugging_face(src: str | Path, dst: str | Path, *, hf_config: str | Path, dtype: str = "keep",
                    overwrite: bool = False) -> Summary:
    """Convert the MindFormers checkpoint ``src`` back into an HF Llama folder ``dst``.

    ``hf_config`` is the original ``config.json`` (or its folder, whose tokenizer and generation config
    are copied too). Tensors are bit-identical to the original HF ones when no dtype change is asked for.
    """
    src, dst = Path(src), Path(dst)
    arch, raw = read_arch(hf_config)
    sources = read_mindspore_ckpt(src)
    qkv_concat = any(".attention.w_qkv." in name for name in sources)
    resolved, ignored = resolve(_reverse_targets(arch, qkv_concat), sources, ignore=_ignore_reverse(arch),
                                dtype=out_dtype(dtype), what=f"llama {src}")
    summary = Summary(f"llama {src} -> Hugging Face", ignored=ignored)
    shards = _shard(resolved)
    config = set_torch_dtype(raw, resolved)
    with atomic_outputs(dst, overwrite=overwrite, folders=True) as (tmp,):
        write_json(tmp / "config.json", config)
        if config_path(hf_config).parent == Path(hf_config):
            copy_files(Path(hf_config), tmp, HF_SIDE_FILES)
        if len(shards) == 1:
            write_safetensors(tmp / "model.safetensors", shards[0], summary)
        else:
            weight_map = {}
            for n, shard in enumerate(shards, 1):
                name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(tmp / name, shard, summary)
                weight_map.update({item.target.name: name for item in shard})
            write_json(tmp / "model.safetensors.index.json",
                       {"metadata": {"total_size": summary.bytes}, "weight_map": weight_map})
    summary.files = [dst]
    return summary


def _shard(items: list, limit: int = HF_SHARD_BYTES) -> list[list]:
    """Split ``items`` in order into groups of at most ``limit`` bytes, as ``save_pretrained`` does."""
    shards, size = [[]], 0
    for item in items:
        nbytes = math.prod(item.target.shape) * itemsize(item.dtype)
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def convert(src: str | Path, dst: str | Path, *, dtype: str = "keep", qkv_concat: bool = False,
            hf_config: str | Path | None = None, allow_pickle: bool = False, overwrite: bool = False) -> Summary:
    """Either direction, chosen by ``src``: an HF folder converts to MindFormers, a MindSpore ``.ckpt`` back."""
    src = Path(src)
    if src.is_dir():
        if hf_config is not None:
            raise ConversionError("--hf-config is for the MindFormers -> HF direction (a .ckpt --src)")
        return to_mindformers(src, dst, dtype=dtype, qkv_concat=qkv_concat, allow_pickle=allow_pickle,
                              overwrite=overwrite)
    if not src.is_file():
        raise ConversionError(f"{src}: not found")
    if is_torch_pickle(src):
        raise ConversionError(f"{src} is a PyTorch file; pass the Hugging Face folder that holds it as --src")
    if hf_config is None:
        raise ConversionError("converting a MindFormers .ckpt back to Hugging Face needs --hf-config (the original "
                              "config.json or its folder)")
    if qkv_concat:
        raise ConversionError("--qkv-concat is for the HF -> MindFormers direction; the fused layout is detected "
                              "when reading a .ckpt")
    return to_hugging_face(src, dst, hf_config=hf_config, dtype=dtype, overwrite=overwrite)
