"""Stage 5 of PMG: score generated images against the user's history and the target (paper section 1.4).

Run it with ``python -m research.pmg.evaluate`` (or ``scripts/run_eval.sh``); README.md here gives the
metrics' exact settings. Importing this package imports only its settings (``research.pmg.config`` builds
its ``evaluate:`` section from them); the rest of the public API below loads on first use, and MindSpore
only with the LPIPS model (:mod:`.lpips`) or the CLIP embedder (:mod:`.clip_metrics`).
"""
from importlib import import_module

from research.pmg.evaluate.config import EvaluateConfig, MethodConfig

_LAZY = {
    "evaluate": "run", "METRICS": "scoring", "ssim": "ssim", "SSIMSettings": "ssim", "bootstrap_ci": "stats",
    "paired_comparison": "stats", "Interval": "stats", "PairedResult": "stats", "read_images": "methods",
    "read_manifest": "methods",
}

__all__ = ["EvaluateConfig", "MethodConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"research.pmg.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
