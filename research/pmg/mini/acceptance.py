"""PMG-mini's acceptance rule, read from an evaluation ``summary.json``: does PMG personalize without losing the target?

Full PMG must beat no personalization on both personalization metrics, each with a paired bootstrap interval of
the per-sample difference that excludes zero in the right direction (CLIP image similarity to the history up,
LPIPS distance to the history down), while its CLIP image similarity to the target may drop by at most
``max_target_drop`` (a fraction of the baseline's mean). One function decides, so the test, the benchmark table
and the README state the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# (metric, higher is better) of the personalization side; both must improve significantly.
PERSONALIZATION = (("clip_image_history", True), ("lpips_history", False))
ACCURACY = "clip_image_target"
MAX_TARGET_DROP = 0.10  # relative: PMG keeps at least 90 % of the baseline's CLIP similarity to the target


@dataclass(frozen=True)
class Verdict:
    what: str
    passed: bool
    detail: str


def verdicts(summary: Mapping[str, Any], method: str = "pmg", baseline: str = "no_personalization",
             max_target_drop: float = MAX_TARGET_DROP) -> list[Verdict]:
    """One verdict per rule; raises KeyError naming what the summary lacks (a method, a metric)."""
    if summary.get("baseline") != baseline:
        raise KeyError(f"the evaluation's baseline is {summary.get('baseline')!r}, not {baseline!r}")
    comparison = summary["comparisons"][method]
    out = []
    for metric, higher in PERSONALIZATION:
        c = comparison[metric]
        passed = c["low"] > 0 if higher else c["high"] < 0
        out.append(Verdict(f"{metric}: {method} {'>' if higher else '<'} {baseline}", passed,
                           f"difference {c['diff']:+.4f}, {summary['statistics']['confidence']:.0%} paired bootstrap "
                           f"[{c['low']:+.4f}, {c['high']:+.4f}], sign-flip p {c['p_value']:.2g}, n {c['n']}"))
    c = comparison[ACCURACY]
    drop = (c["mean_b"] - c["mean_a"]) / abs(c["mean_b"])
    out.append(Verdict(f"{ACCURACY}: drop < {max_target_drop:.0%} of {baseline}", drop < max_target_drop,
                       f"{c['mean_b']:.4f} -> {c['mean_a']:.4f} (relative change {-drop:+.1%}; difference "
                       f"[{c['low']:+.4f}, {c['high']:+.4f}])"))
    return out
