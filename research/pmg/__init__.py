"""PMG: Personalized Multimodal Generation with Large Language Models (Shen et al., WWW 2024), in MindSpore.

Stages, each a sub-package with a ``python -m`` entry point: data preparation, keyword extraction with a
frozen LLM, soft-preference training through frozen Stable Diffusion, generation with CLIP balancing,
and evaluation.
"""
__version__ = "0.1.0"
