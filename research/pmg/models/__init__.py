"""Model factory: every network PMG uses, built from config, real sizes or tiny, weights from local paths only."""
from research.pmg.models.factory import build_clip_parts, build_diffusion_parts, build_llm, resolve_tokenizers

__all__ = ["build_clip_parts", "build_diffusion_parts", "build_llm", "resolve_tokenizers"]
