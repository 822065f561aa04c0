"""PMG: Personalized Multimodal Generation with Large Language Models (Shen et al., WWW 2024), in MindSpore.

Stages, each a sub-package with a ``python -m`` entry point: data preparation, keyword extraction with a
frozen LLM, soft-preference training through frozen Stable Diffusion, generation with CLIP balancing,
and evaluation.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``from research.pmg import PMG``: the library entry point (research/pmg/api/), imported on first use so that
    importing a stage does not load the API."""
    if name == "PMG":
        from research.pmg.api import PMG

        return PMG
    raise AttributeError(f"module 'research.pmg' has no attribute {name!r}")
