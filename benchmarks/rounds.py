"""How the timing benchmarks print the spread behind a median: benchmarks/run.py reads this format back."""
from __future__ import annotations


def spread(values: list[float], digits: int = 2) -> str:
    """The range of a rate or ratio over the rounds it was measured in: ``round 1: x`` for a single round, else
    ``rounds: lo-hi``."""
    if len(values) == 1:
        return f"round 1: {values[0]:.{digits}f}"
    return f"rounds: {min(values):.{digits}f}-{max(values):.{digits}f}"
