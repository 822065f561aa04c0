"""What every ``python -m research.pmg.<stage>`` entry point shares: config flags and user-error handling."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from research.pmg.config import PMGConfig, load_config
from research.pmg.errors import PMGError, error_line

USER_ERROR_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error:`` line and exit code 2, like every other bad input."""

    def error(self, message: str) -> None:
        self.exit(USER_ERROR_EXIT, error_line(f"{message} (see --help)") + "\n")


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """``--config FILE`` and repeatable ``--set key.path=value`` overrides."""
    parser.add_argument("--config", default=default_config, required=default_config is None,
                        help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.lr=1e-5 (repeatable)")


def config_from_args(args: argparse.Namespace) -> PMGConfig:
    return load_config(args.config, args.overrides)


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
