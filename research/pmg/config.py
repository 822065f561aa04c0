"""Typed, validated configuration for every PMG stage.

A YAML file maps onto the nested dataclasses below. Loading checks every key and value once, so a
typo such as ``trian.lr`` fails immediately with the file and field named instead of being ignored
until some later stage silently uses a default. Defaults live here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from research.pmg.data.config import DataConfig
from research.pmg.errors import PMGError
from research.pmg.evaluate.config import EvaluateConfig
from research.pmg.generate.config import GenerateConfig
from research.pmg.keywords.config import KeywordsConfig


class ConfigError(PMGError, ValueError):
    """A configuration file or override is invalid; the message names the source and the field."""


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class RuntimeConfig:
    """Where and how MindSpore runs. Applied once by :func:`research.pmg.runtime.setup_runtime`."""

    device: Literal["auto", "CPU", "Ascend"] = "auto"  # auto: Ascend if the package and a device exist, else CPU
    # One process: the NPU to run on (None = MindSpore's default, DEVICE_ID or 0). Under msrun it must stay
    # unset: msrun gives each worker its own device only when none is named.
    device_id: Optional[int] = None
    mode: Literal["graph", "pynative"] = "graph"  # graph for speed; pynative only to debug
    # auto: bf16 where the chip has it (910B and later), fp16 with dynamic loss scaling where not (910A), fp32 on CPU
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # Fused flash attention in the LLM. auto: on where the chip has it (910B and later), off on 910A and CPU.
    flash_attention: Literal["auto", "on", "off"] = "auto"
    seed: int = 42
    num_threads: int = 0  # CPU runtime threads; 0 = number of cores
    output_dir: str = "output"  # every stage writes below this folder
    log_dir: str = ""  # MindSpore/MindFormers logs; "" = <output_dir>/log
    cache_dir: str = ""  # built tokenizers, cached latents; "" = <output_dir>/cache

    def validate(self, where: str) -> None:
        _check(self.device_id is None or 0 <= self.device_id < 4096, where, "device_id", "must be in [0, 4096) or unset")
        _check(self.num_threads >= 0, where, "num_threads", "must be >= 0")
        _check(bool(self.output_dir), where, "output_dir", "must not be empty")


@dataclass
class LlamaConfig:
    """Llama 2 architecture (MindFormers) plus where its weights and tokenizer are on disk.

    Defaults are Llama-2-7b-chat. ``checkpoint`` is a MindFormers ``.ckpt`` written by ``ckpt_convert``;
    empty means random initialisation (tiny test models only). ``tokenizer`` is a sentencepiece
    ``tokenizer.model``; empty means build a small one from the bundled corpus (tiny models only).
    """

    checkpoint: str = ""
    tokenizer: str = ""
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    n_kv_heads: int = 0  # 0 = num_heads (no grouped-query attention, as in Llama-2-7B)
    intermediate_size: int = 11008
    multiple_of: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    seq_length: int = 512  # static sequence length: every prompt is padded to it so graphs compile once
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def validate(self, where: str) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "seq_length"):
            _check(getattr(self, name) > 0, where, name, "must be > 0")
        _check(self.hidden_size % self.num_heads == 0, where, "hidden_size", "must be divisible by num_heads")
        kv = self.n_kv_heads or self.num_heads
        _check(self.num_heads % kv == 0, where, "n_kv_heads", "must divide num_heads")
        _check(self.rms_norm_eps > 0, where, "rms_norm_eps", "must be > 0")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            _check(0 <= getattr(self, name) < self.vocab_size, where, name, "must be a token id below vocab_size")


@dataclass
class SoftPreferenceConfig:
    """The bias-correction part of PMG: P-Tuning v2 prefix (S per layer) and L multimodal tokens."""

    prefix_len: int = 4  # S, the paper's and the official code's value
    num_mm_tokens: int = 4  # L
    prefix_projection: bool = False  # reparameterise the prefix through an MLP (P-Tuning v2 option)
    projection_dim: int = 512
    dropout: float = 0.0

    def validate(self, where: str) -> None:
        _check(self.prefix_len > 0, where, "prefix_len", "must be > 0")
        _check(self.num_mm_tokens > 0, where, "num_mm_tokens", "must be > 0")
        _check(self.projection_dim > 0, where, "projection_dim", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, where, "dropout", "must be in [0, 1)")


@dataclass
class SchedulerConfig:
    """Noise schedule of the diffusion model (used when the diffusion path has no scheduler folder)."""

    name: Literal["ddpm", "ddim", "dpm_solver"] = "ddpm"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    def validate(self, where: str) -> None:
        _check(self.num_train_timesteps > 0, where, "num_train_timesteps", "must be > 0")
        _check(0 < self.beta_start < self.beta_end < 1, where, "beta_start", "need 0 < beta_start < beta_end < 1")


@dataclass
class DiffusionConfig:
    """Stable Diffusion parts (MindONE). Either a local diffusers folder or architectures for random init.

    ``path`` is a diffusers-format folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``) as written by ``ckpt_convert sd``. When empty, the models are built with random
    weights from the ``unet``, ``vae`` and ``text_encoder`` mappings, whose keys are the keyword
    arguments of the MindONE/transformers config classes (checked when the models are built).
    """

    path: str = ""
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    tokenizer_max_length: int = 77
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def validate(self, where: str) -> None:
        if not self.path:
            for name in ("unet", "vae", "text_encoder"):
                _check(bool(getattr(self, name)), where, name, "needed when path is empty (random-init models)")
        _check(self.tokenizer_max_length > 1, where, "tokenizer_max_length", "must be > 1")


@dataclass
class ClipConfig:
    """The CLIP scorer used to balance personalization and accuracy (section 1.3 of the paper).

    ``path`` is a Hugging Face ``CLIPModel`` folder; when empty, ``text_config``/``vision_config``
    build a random-init model (tiny tests only).
    """

    path: str = ""
    text_config: dict[str, Any] = field(default_factory=dict)
    vision_config: dict[str, Any] = field(default_factory=dict)
    projection_dim: int = 768

    def validate(self, where: str) -> None:
        if not self.path:
            _check(bool(self.text_config), where, "text_config", "needed when path is empty")
            _check(bool(self.vision_config), where, "vision_config", "needed when path is empty")
        _check(self.projection_dim > 0, where, "projection_dim", "must be > 0")


@dataclass
class ModelsConfig:
    llm: LlamaConfig = field(default_factory=LlamaConfig)
    soft_preference: SoftPreferenceConfig = field(default_factory=SoftPreferenceConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)


@dataclass
class TrainConfig:
    """Optimisation of the soft-preference parameters (prefix, multimodal tokens, map: the only trainable ones)."""

    batch_size: int = 4  # per worker
    lr: float = 5e-6
    weight_decay: float = 0.01
    max_steps: int = 1000  # optimizer steps
    warmup_steps: int = 100  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_accum_steps: int = 1
    grad_clip: float = 1.0  # max global norm; 0 disables clipping
    # auto: dynamic when the runtime computes in fp16 (its range overflows), none for bf16 and fp32
    loss_scale: Literal["auto", "none", "static", "dynamic"] = "auto"
    initial_loss_scale: float = 65536.0
    # Recompute activations in the backward pass instead of keeping them (LLM layers and UNet blocks): less
    # memory, about one more forward pass of time. Off on CPU, where memory is not the limit.
    recompute: bool = False
    # Conditioning of the UNet during training: which keyword groups go with the soft embedding, and weights.
    conditioning: Literal["full", "soft_only"] = "full"  # full: target + preference keywords + soft; soft_only: target + soft
    target_weight: float = 1.0  # w_t
    preference_weight: float = 1.0  # w_p
    soft_weight: float = 1.0  # w_s
    # Negative-item term (off at 0): w * softplus(target error - error on another sample's target), see
    # research.pmg.train.step.PMGDiffusionLoss
    negative_weight: float = 0.0
    keywords: str = ""  # keywords JSONL from the keywords stage; "" = <output_dir>/keywords/keywords.jsonl
    eval_every: int = 100  # steps between held-out losses; 0 = only at the end
    eval_batches: int = 4
    save_every: int = 100  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # checkpoints kept
    log_every: int = 10

    def validate(self, where: str) -> None:
        _check(self.batch_size > 0, where, "batch_size", "must be > 0")
        _check(self.lr > 0, where, "lr", "must be > 0")
        _check(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        _check(self.max_steps > 0, where, "max_steps", "must be > 0")
        _check(0 <= self.warmup_steps <= self.max_steps, where, "warmup_steps", "must be in [0, max_steps]")
        _check(0 <= self.min_lr_ratio <= 1, where, "min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_accum_steps > 0, where, "grad_accum_steps", "must be > 0")
        _check(self.grad_clip >= 0, where, "grad_clip", "must be >= 0")
        _check(self.initial_loss_scale > 0, where, "initial_loss_scale", "must be > 0")
        _check(self.negative_weight >= 0, where, "negative_weight", "must be >= 0 (0 = off)")
        for name in ("eval_every", "save_every", "eval_batches", "log_every"):
            _check(getattr(self, name) >= 0, where, name, "must be >= 0")
        _check(self.keep_last > 0, where, "keep_last", "must be > 0")


@dataclass
class PMGConfig:
    """The whole configuration. ``source`` records the file it came from, for error messages."""

    scenario: Literal["pog", "movielens", "stickers"] = "stickers"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    keywords: KeywordsConfig = field(default_factory=KeywordsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    source: str = field(default="<defaults>", metadata={"internal": True})

    def validate(self) -> None:
        """Check cross-section rules; per-section rules run in :func:`_build`."""
        where = f"{self.source}: "
        llm, soft = self.models.llm, self.models.soft_preference
        _check(soft.num_mm_tokens < llm.seq_length, where, "models.soft_preference.num_mm_tokens",
               f"must be smaller than models.llm.seq_length ({llm.seq_length})")
        _check(self.keywords.max_new_tokens < llm.seq_length, where, "keywords.max_new_tokens",
               f"must be smaller than models.llm.seq_length ({llm.seq_length})")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------
def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PMGConfig:
    """Load a YAML config, apply ``key.path=value`` overrides, validate, and return it.

    ``path=None`` gives the defaults (Llama-2-7B / SD sizes). Relative model and data paths in the file
    stay relative to the working directory, as users type them on the command line.
    """
    cfg = load_dataclass_config(PMGConfig, path, overrides)
    cfg.validate()
    return cfg


def load_dataclass_config(cls: type, path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()):
    """Load a YAML file into the dataclass ``cls`` with the same rules as :func:`load_config`.

    For configs other than :class:`PMGConfig` (the mini-model trainers): ``base:`` files, ``key.path=value``
    overrides, unknown fields and wrong types named with the file, each section's ``validate`` run. ``cls``
    needs a ``source`` field (marked ``metadata={"internal": True}``), which gets the file name.
    """
    source = str(path) if path is not None else "<defaults>"
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        _apply_override(raw, item, source)
    cfg = _build(cls, raw, source, prefix="")
    cfg.source = source
    return cfg


def dump_config(cfg: PMGConfig, path: str | os.PathLike) -> None:
    """Write the resolved config next to a stage's outputs, so every result records what made it."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file, first merging the file named by its optional ``base`` key (relative to it)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: field 'base' must be a file name, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to {base_path}")
    return _merge(_read_yaml(base_path, seen + (path.resolve(),)), raw)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: sections merge key by key, any other value in ``update`` replaces the base's."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key.path=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{item}': empty field name")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': {part} is not a section in {source}")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from None


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown field '{prefix}{unknown[0]}' (known in {where}: {', '.join(fields)})")
    values = {name: _coerce(hints[name], raw[name], source, prefix + name) for name in raw}
    obj = cls(**values)
    if hasattr(obj, "validate") and cls is not PMGConfig:
        obj.validate(f"{source}: {prefix}")
    return obj


def _coerce(hint: Any, value: Any, source: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, name + ".")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{source}: field '{name}' = {value!r}; choose one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, source, name)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: field '{name}' must be a mapping, got {type(value).__name__}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: field '{name}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(item, v, source, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: field '{name}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: field '{name}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: field '{name}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: field '{name}' must be a string, got {value!r}")
        return value
    return value


def _check(ok: bool, where: str, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}{name}: {message}")
