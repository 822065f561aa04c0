"""Reading a YAML config into the section dataclasses: bounded parsing, ``base:`` files, ``--set`` overrides, types.

Loading checks every key and value once, so a typo such as ``trian.lr`` fails immediately with the file and
field named instead of being ignored until some later stage silently uses a default.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from research.pmg.config.checks import INT64
from research.pmg.config.pmg import PMGConfig
from research.pmg.errors import MAX_VALUE_CHARS, ConfigError, clip, short_repr

# A config is a page of settings, but YAML can make a small file huge: nine nested anchors of nine aliases are
# 10^9 values in 300 bytes, and 5000 nested brackets overflow the parser's stack. These limits are checked
# before any value is read, for config files, their ``base:`` files and ``--set`` values alike.
MAX_CONFIG_BYTES = 1 << 20  # one file or one --set value
MAX_DEPTH = 64  # mappings and lists inside each other
MAX_VALUES = 20_000  # values once YAML aliases are expanded (a stage key expands them); the largest shipped: 173
MAX_BASE_CHAIN = 16  # files in a ``base:`` chain


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
