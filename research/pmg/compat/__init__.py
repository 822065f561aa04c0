"""Compatibility layers that let the project's MindSpore stack run where its libraries do not support it.

``install_cpu_compat`` makes MindONE's ``mint``-based models (UNet, VAE, schedulers, CLIP) run on CPU; see
:mod:`research.pmg.compat.mint_cpu`. ``research.pmg.runtime.setup_runtime`` calls it on CPU.
"""
from research.pmg.compat.mint_cpu import install_cpu_compat, is_installed, originals

__all__ = ["install_cpu_compat", "is_installed", "originals"]
