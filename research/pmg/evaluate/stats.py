"""Aggregating per-sample scores: mean with a bootstrap interval, and paired comparisons between methods.

Everything is seeded, so a report is reproducible from its settings:

- :func:`bootstrap_ci`: percentile bootstrap of the mean (resample the samples with replacement);
- :func:`paired_comparison`: two methods scored on the same samples. The per-sample differences get a
  paired bootstrap interval of their mean and a two-sided sign-flip permutation test (under "no
  difference" each difference is as likely positive as negative). The test enumerates all 2^n sign
  patterns when that is at most ``permutations``, so small n gives exact p-values; otherwise it draws
  ``permutations`` random patterns and reports (1 + hits) / (1 + permutations), never 0.

NaN scores (e.g. a CLIP text score for a sample without keywords) are left out, pairwise for comparisons.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_CHUNK = 1000  # resamples per vectorised block: bounds memory at _CHUNK * n numbers


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and its ``confidence`` bootstrap interval [low, high]."""

    n: int
    mean: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedResult:
    """Method A minus method B on the ``n`` samples both have a score for."""

    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean of (a - b)
    low: float  # bootstrap interval of diff
    high: float
    p_value: float  # two-sided sign-flip permutation test of "mean difference is 0"
    exact: bool  # the p-value enumerated every sign pattern

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return values[np.isfinite(values)]


def _bootstrap_means(values: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    n, out = len(values), []
    for start in range(0, samples, _CHUNK):
        rows = min(_CHUNK, samples - start)
        out.append(values[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(out)


def bootstrap_ci(values, *, samples: int = 10000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean of the finite ``values`` and its percentile bootstrap interval (NaN when there are none)."""
    values = _finite(values)
    if len(values) == 0:
        return Interval(0, float("nan"), float("nan"), float("nan"))
    mean = float(values.mean())
    if len(values) == 1 or np.all(values == values[0]):
        return Interval(len(values), mean, mean, mean)
    means = _bootstrap_means(values, samples, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(len(values), mean, float(low), float(high))


def sign_flip_p_value(diffs, *, permutations: int = 10000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p-value of "the differences are symmetric around 0"; ``(p, exact)``."""
    diffs = _finite(diffs)
    n = len(diffs)
    if n == 0:
        return float("nan"), False
    observed = abs(diffs.mean())
    # Sign patterns that tie with the observed statistic must count as "as extreme"; allow for rounding.
    threshold = observed - 1e-12 * max(1.0, float(np.abs(diffs).mean()))
    if 2 ** n <= permutations:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        stats = np.abs((patterns * diffs).mean(axis=1))
        return float(np.mean(stats >= threshold)), True
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, _CHUNK):
        rows = min(_CHUNK, permutations - start)
        signs = rng.integers(0, 2, size=(rows, n)) * 2 - 1
        hits += int(np.count_nonzero(np.abs((signs * diffs).mean(axis=1)) >= threshold))
    return (1.0 + hits) / (1.0 + permutations), False


def paired_comparison(a, b, *, samples: int = 10000, permutations: int = 10000, confidence: float = 0.95,
                      seed: int = 0) -> PairedResult:
    """Compare per-sample scores ``a`` and ``b`` (same samples, same order): mean difference a - b,
    its paired bootstrap interval and the sign-flip permutation p-value."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.shape[0]} and {b.shape[0]}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diffs = a - b
    interval = bootstrap_ci(diffs, samples=samples, confidence=confidence, seed=seed)
    p_value, exact = sign_flip_p_value(diffs, permutations=permutations, seed=seed)
    nan = float("nan")
    return PairedResult(n=len(diffs), mean_a=float(a.mean()) if len(a) else nan,
                        mean_b=float(b.mean()) if len(b) else nan, diff=interval.mean, low=interval.low,
                        high=interval.high, p_value=p_value, exact=exact)
