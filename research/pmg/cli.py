"""What every ``python -m research.pmg.<stage>`` entry point shares: config flags and user-error handling.

Settings live in the config (defaults in research/pmg/config/, values in configs/*.yaml) and change with
``--set section.field=value``. A stage's few other flags name its inputs and outputs, and each is short for a
``--set`` of one field (:func:`add_field_flag`), so research/pmg/layout.py resolves every path from the config alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from research.pmg.config import PMGConfig, load_config
from research.pmg.errors import PMGError, error_line

USER_ERROR_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error:`` line and exit code 2, like every other bad input."""

    def error(self, message: str) -> None:
        self.exit(USER_ERROR_EXIT, error_line(f"{message} (see --help)") + "\n")


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None,
                    required: bool | None = None) -> None:
    """``--config FILE`` (required unless there is a default or ``required`` is false) and repeatable
    ``--set key.path=value`` overrides."""
    parser.add_argument("--config", default=default_config,
                        required=default_config is None if required is None else required,
                        help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-5 (repeatable; every field and its "
                             "default: research/pmg/config/)")
    parser.set_defaults(fields=())


class _FieldFlag(argparse.Action):
    """Stores ``field=value`` for :func:`field_overrides` instead of a value of its own."""

    def __init__(self, option_strings, dest, field: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.field = field

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        # JSON is YAML: the override reads back exactly this string (or true), whatever characters a path holds
        namespace.fields = (*namespace.fields, f"{self.field}={json.dumps(value)}")


def add_field_flag(parser: argparse.ArgumentParser, flag: str, field: str, help: str, **kwargs) -> None:
    """``flag VALUE``: short for ``--set field=VALUE``, applied after every ``--set``. A switch (``nargs=0``) sets
    the field to true. Needs :func:`add_config_args` on the same parser."""
    if kwargs.get("nargs") == 0:
        kwargs.setdefault("const", True)
    parser.add_argument(flag, action=_FieldFlag, field=field, help=f"{help} (sets {field})", **kwargs)


def field_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items, then those of the field flags (which win)."""
    return [*args.overrides, *args.fields]


def config_from_args(args: argparse.Namespace) -> PMGConfig:
    return load_config(args.config, field_overrides(args))


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; report user errors as ``error: <message>`` on one bounded line with exit code 2."""
    try:
        return int(main(argv) or 0)
    except (PMGError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
