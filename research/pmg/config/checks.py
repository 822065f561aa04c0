"""Field checks every config section uses: a failed one is a one-line :class:`ConfigError` naming the field."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from research.pmg.errors import ConfigError

SEED_LIMIT = 2 ** 32  # NumPy's legacy seeding, which MindSpore and the data stage use, takes [0, 2**32)
INT64 = 2 ** 63  # integers are sizes, counts and ids: none needs more than 64 bits


def check(ok: bool, where: str, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}{name}: {message}")


def check_range(value: int, low: int, high: int, where: str, name: str) -> None:
    """``low <= value <= high``: sizes and counts have a ceiling, so a typo cannot ask for all the memory."""
    if value < low:
        check(False, where, name, "must be > 0" if low == 1 else f"must be >= {low}")
    check(value <= high, where, name, f"must be <= {high}")


def check_finite(obj: Any, where: str) -> None:
    """Every float field of the dataclass ``obj`` holds a finite number.

    The loader refuses inf and nan already; this is for values set past it, by a stage's command-line flags.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        check(not isinstance(value, float) or math.isfinite(value), where, f.name,
               f"must be a finite number, got {value}")
