"""Typed, validated configuration for every PMG stage.

A YAML file maps onto the nested dataclasses below. Loading checks every key and value once, so a
typo such as ``trian.lr`` fails immediately with the file and field named instead of being ignored
until some later stage silently uses a default. Defaults live here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from research.pmg.data.config import DataConfig
from research.pmg.errors import MAX_MESSAGE_CHARS, MAX_VALUE_CHARS, PMGError, clip, short_repr
from research.pmg.evaluate.config import EvaluateConfig
from research.pmg.generate.config import GenerateConfig
from research.pmg.keywords.config import KeywordsConfig


class ConfigError(PMGError, ValueError):
    """A configuration file or override is invalid; the message names the source and the field.

    The message is one line of bounded length, whatever the file held.
    """

    def __init__(self, message: str):
        super().__init__(clip(" ".join(message[:4 * MAX_MESSAGE_CHARS].split())))


# A config is a page of settings, but YAML can make a small file huge: nine nested anchors of nine aliases are
# 10^9 values in 300 bytes, and 5000 nested brackets overflow the parser's stack. These limits are checked
# before any value is read, for config files, their ``base:`` files and ``--set`` values alike.
MAX_CONFIG_BYTES = 1 << 20  # one file or one --set value
MAX_DEPTH = 64  # mappings and lists inside each other
MAX_VALUES = 20_000  # values once YAML aliases are expanded (a stage key expands them); the largest shipped: 173
MAX_BASE_CHAIN = 16  # files in a ``base:`` chain
SEED_LIMIT = 2 ** 32  # NumPy's legacy seeding, which MindSpore and the data stage use, takes [0, 2**32)
INT64 = 2 ** 63  # integers are sizes, counts and ids: none needs more than 64 bits


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
        _check(0 <= self.num_threads <= 4096, where, "num_threads", "must be in [0, 4096] (0 = number of cores)")
        _check(0 <= self.seed < SEED_LIMIT, where, "seed", "must be in [0, 2**32)")
        _check(bool(self.output_dir), where, "output_dir", "must not be empty")
        if self.device == "CPU":  # with device auto the same rules run at setup, once the device is known
            _check(self.precision in ("auto", "fp32"), where, "precision",
                   f"{self.precision} is not supported on CPU (device: CPU); use fp32 or auto")
            _check(self.flash_attention != "on", where, "flash_attention",
                   "CPU has no flash-attention kernel (device: CPU); use auto or off")


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
        # Upper bounds well above the largest Llama (405B: 16384 wide, 126 layers, 53248 MLP, 128k context)
        for name, high in (("vocab_size", 1 << 20), ("hidden_size", 1 << 16), ("num_layers", 1024),
                           ("num_heads", 1024), ("intermediate_size", 1 << 18), ("seq_length", 1 << 20)):
            _check_range(getattr(self, name), 1, high, where, name)
        _check(self.hidden_size % self.num_heads == 0, where, "hidden_size", "must be divisible by num_heads")
        _check(0 <= self.n_kv_heads <= self.num_heads, where, "n_kv_heads", "must be in [0, num_heads] (0 = num_heads)")
        kv = self.n_kv_heads or self.num_heads
        _check(self.num_heads % kv == 0, where, "n_kv_heads", "must divide num_heads")
        _check_range(self.multiple_of, 1, 1 << 16, where, "multiple_of")
        _check(0 < self.rms_norm_eps < 1, where, "rms_norm_eps", "must be in (0, 1)")
        _check(self.rope_theta > 0, where, "rope_theta", "must be > 0")
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
        _check_range(self.prefix_len, 1, 4096, where, "prefix_len")
        _check_range(self.num_mm_tokens, 1, 4096, where, "num_mm_tokens")
        _check_range(self.projection_dim, 1, 1 << 16, where, "projection_dim")
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
        _check_range(self.num_train_timesteps, 1, 100_000, where, "num_train_timesteps")
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
        _check_range(self.tokenizer_max_length, 2, 1 << 16, where, "tokenizer_max_length")


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
        _check_range(self.projection_dim, 1, 1 << 16, where, "projection_dim")


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
        _check_range(self.batch_size, 1, 1 << 16, where, "batch_size")
        _check(self.lr > 0, where, "lr", "must be > 0")
        _check(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        _check_range(self.max_steps, 1, 10 ** 9, where, "max_steps")
        _check(0 <= self.warmup_steps <= self.max_steps, where, "warmup_steps", "must be in [0, max_steps]")
        _check(0 <= self.min_lr_ratio <= 1, where, "min_lr_ratio", "must be in [0, 1]")
        _check_range(self.grad_accum_steps, 1, 1 << 16, where, "grad_accum_steps")
        _check(self.grad_clip >= 0, where, "grad_clip", "must be >= 0")
        _check(0 < self.initial_loss_scale <= 2.0 ** 32, where, "initial_loss_scale", "must be in (0, 2**32]")
        _check(self.negative_weight >= 0, where, "negative_weight", "must be >= 0 (0 = off)")
        for name in ("eval_every", "save_every", "log_every"):
            _check_range(getattr(self, name), 0, 10 ** 9, where, name)
        _check_range(self.eval_batches, 0, 1 << 20, where, "eval_batches")
        _check_range(self.keep_last, 1, 10_000, where, "keep_last")


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
    _check_shape(raw, source)  # the file, its base files and the overrides together
    cfg = _build(cls, raw, source, prefix="")
    cfg.source = source
    return cfg


def dump_config(cfg: PMGConfig, path: str | os.PathLike) -> None:
    """Write the resolved config next to a stage's outputs, so every result records what made it."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def check_finite(obj: Any, where: str) -> None:
    """Every float field of the dataclass ``obj`` holds a finite number.

    The loader refuses inf and nan already; this is for values set past it, by a stage's command-line flags.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        _check(not isinstance(value, float) or math.isfinite(value), where, f.name,
               f"must be a finite number, got {value}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read one YAML file, first merging the file named by its optional ``base`` key (relative to it)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a page of settings")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                          "save the file as UTF-8") from None
    raw = _parse_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: field 'base' must be a file name, got {short_repr(base)}")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to {base_path}")
    if len(seen) + 1 >= MAX_BASE_CHAIN:
        raise ConfigError(f"{path}: 'base' chain longer than {MAX_BASE_CHAIN} files")
    return _merge(_read_yaml(base_path, seen + (path.resolve(),)), raw)


class _Bounded(yaml.YAMLError):
    """A document over one of the loader's limits: reported as such, not as invalid YAML."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops parsing past :data:`MAX_DEPTH` levels or :data:`MAX_VALUES` values.

    PyYAML composes nested nodes recursively (5000 brackets are a RecursionError) and parses about 20000
    values a second: both limits are checked as each value is read, not after.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = self._values = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._values += 1
        try:
            if self._depth > MAX_DEPTH or self._values > MAX_VALUES:
                line = self.peek_event().start_mark.line + 1
                raise _Bounded(f"line {line}: nested more than {MAX_DEPTH} levels deep" if self._depth > MAX_DEPTH
                               else f"line {line}: more than {MAX_VALUES} values; a config is a page of settings")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse_yaml(text: str, where: str, path: str = "") -> Any:
    """One YAML document, within the size and nesting limits, aliases bounded; errors name ``where`` and the
    field (``path`` is the field the document is the value of)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: longer than {MAX_CONFIG_BYTES >> 20} MiB; a config is a page of settings")
    loader = None
    try:
        loader = _BoundedLoader(text)  # reads the text at once: a control character fails here
        data = loader.get_single_data()
    except _Bounded as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except (ValueError, OverflowError) as exc:  # a value YAML cannot build: an int past 4300 digits, 2024-02-30
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    _check_shape(data, where, path)
    return data


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's message on one line: position, problem and context, without its quoted snippet and caret."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    return f"{where}{exc.problem or exc.context or 'malformed'}{context}"


def _check_shape(data: Any, where: str, path: str = "") -> None:
    """Refuse what no config holds before any value is read: more than :data:`MAX_VALUES` values once aliases
    are expanded, more than :data:`MAX_DEPTH` levels, a value inside itself, mapping keys that are not text,
    values other than plain data (YAML dates, binary, sets: every stage records its settings as JSON).

    The walk stops at the first value over the limit, so an alias bomb costs :data:`MAX_VALUES` steps.
    """
    count = 0
    active: set[int] = set()

    def walk(value: Any, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        at = path or "top level"
        if count > MAX_VALUES:
            raise ConfigError(f"{where}: {at}: more than {MAX_VALUES} values once YAML aliases are expanded; "
                              "a config is a page of settings")
        if isinstance(value, (str, int, float, bool, type(None))):
            return
        if not isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: {at}: {short_repr(value)} of type {type(value).__name__} is not plain data "
                              "(text, numbers, true/false, lists, mappings); quote it if it is text")
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{where}: {at}: nested more than {MAX_DEPTH} levels deep")
        if id(value) in active:
            raise ConfigError(f"{where}: {at}: contains itself (a YAML alias inside its own anchor)")
        active.add(id(value))
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: {at}: key {short_repr(key)} is not text (field names are; "
                                      "quote it)")
                walk(child, clip(f"{path}.{key}" if path else key, 2 * MAX_VALUE_CHARS), depth + 1)
        else:
            for child in value:
                walk(child, path, depth + 1)
        active.discard(id(value))

    walk(data, path, path.count(".") + 1 if path else 0)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: sections merge key by key, any other value in ``update`` replaces the base's."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    shown = f"override {short_repr(item)}"
    if "=" not in item:
        raise ConfigError(f"{shown}: expected key.path=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{shown}: empty field name")
    if len(parts) > MAX_DEPTH:
        raise ConfigError(f"{shown}: field name nested more than {MAX_DEPTH} levels deep")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{shown}: {clip(part, MAX_VALUE_CHARS)} is not a section in {source}")
        node = child
    node[parts[-1]] = _parse_yaml(text, shown, ".".join(parts)) if text.strip() else ""


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(raw) - set(fields))  # keys are text: _check_shape saw to it
    if unknown:
        raise ConfigError(f"{source}: unknown field {short_repr(prefix + unknown[0])} "
                          f"(known in {where}: {', '.join(fields)})")
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
            raise ConfigError(f"{source}: field '{name}' = {short_repr(value)}; choose one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, source, name)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: field '{name}' must be a mapping, got {type(value).__name__}")
        _, item = typing.get_args(hint) or (str, Any)
        if item is Any:  # keyword arguments of another library's config class: it checks them
            return dict(value)
        return {key: _coerce(item, v, source, f"{name}.{key}") for key, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: field '{name}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(item, v, source, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: field '{name}' must be true or false, got {short_repr(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: field '{name}' must be an integer, got {short_repr(value)}")
        if not -INT64 <= value < INT64:
            raise ConfigError(f"{source}: field '{name}' = {short_repr(value)} is out of range (64-bit integers)")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: field '{name}' must be a number, got {short_repr(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer past the float range
            number = math.inf
        if not math.isfinite(number):  # inf or nan: every later step (loss, schedule, scores) would be nan
            raise ConfigError(f"{source}: field '{name}' must be a finite number, got {short_repr(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: field '{name}' must be a string, got {short_repr(value)}")
        return value
    return value


def _check(ok: bool, where: str, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}{name}: {message}")


def _check_range(value: int, low: int, high: int, where: str, name: str) -> None:
    """``low <= value <= high``: sizes and counts have a ceiling, so a typo cannot ask for all the memory."""
    if value < low:
        _check(False, where, name, "must be > 0" if low == 1 else f"must be >= {low}")
    _check(value <= high, where, name, f"must be <= {high}")
