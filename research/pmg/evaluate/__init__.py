"""Stage 5 of PMG: score generated images against the user's history and the target (the paper's evaluation).

Run it with ``python -m research.pmg.evaluate`` (or ``scripts/run_eval.sh``); README.md here gives the
metrics' exact settings (the ``evaluate:`` section itself is research.pmg.config.evaluate). The public API
below loads on first use, and MindSpore only with the LPIPS model (research.pmg.models.lpips) or the CLIP
embedder (:mod:`.clip_metrics`).
"""
from importlib import import_module

_LAZY = {
    "evaluate": "run", "METRICS": "scoring", "ssim": "ssim", "SSIMSettings": "ssim", "bootstrap_ci": "stats",
    "paired_comparison": "stats", "Interval": "stats", "PairedResult": "stats", "read_images": "methods",
    "read_manifest": "methods",
}

__all__ = [*_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"research.pmg.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
