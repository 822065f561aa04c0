"""Build the models a stage needs from a :class:`PMGConfig`, resolving tokenizers first.

Tiny configs leave tokenizer paths empty; they are then built offline from the bundled corpus with the
vocabulary sizes the models declare, so random-init models get real tokenizers without any download.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from research.pmg.config import PMGConfig
from research.pmg.runtime import Runtime

_TINY_CLIP_VOCAB = 1000  # a random-init text encoder that names no vocab_size gets a tokenizer this big


@dataclass(frozen=True)
class TokenizerPaths:
    """Local tokenizer files: a sentencepiece model for the LLM, CLIP BPE folders for SD and the scorer."""

    llm: Path
    diffusion: Path | None  # None: the diffusers folder brings its own tokenizer/
    clip: Path | None  # None: the CLIPModel folder brings its own


def resolve_tokenizers(cfg: PMGConfig, runtime: Runtime) -> TokenizerPaths:
    """Where each tokenizer is; builds tiny ones into ``runtime.cache_dir`` when the config names none."""
    from research.pmg.models.tokenizers import build_tiny_tokenizers

    models = cfg.models
    sd_vocab = models.diffusion.text_encoder.get("vocab_size", _TINY_CLIP_VOCAB)
    clip_vocab = models.clip.text_config.get("vocab_size", _TINY_CLIP_VOCAB)

    def tiny(clip_vocab_size: int) -> tuple[Path, Path]:  # cached: a repeated call only looks the build up
        return build_tiny_tokenizers(runtime.cache_dir, models.llm.vocab_size, clip_vocab_size)

    llm = Path(models.llm.tokenizer) if models.llm.tokenizer else tiny(sd_vocab)[0]
    if not llm.is_file():
        raise FileNotFoundError(f"{cfg.source}: models.llm.tokenizer: {llm} not found")
    return TokenizerPaths(llm=llm, diffusion=None if models.diffusion.path else tiny(sd_vocab)[1],
                          clip=None if models.clip.path else tiny(clip_vocab)[1])


def build_llm(cfg: PMGConfig, runtime: Runtime, *, batch_size: int = 1, use_past: bool = False,
              recompute: bool = False):
    """The frozen Llama 2 (see :func:`research.pmg.models.llama.build_llama`)."""
    from research.pmg.models.llama import build_llama

    return build_llama(cfg.models.llm, runtime, batch_size=batch_size, use_past=use_past,
                       kv_blocks=cfg.keywords.kv_cache_blocks, recompute=recompute)


def build_diffusion_parts(cfg: PMGConfig, runtime: Runtime, tokenizers: TokenizerPaths):
    """The frozen Stable Diffusion parts (see :func:`research.pmg.models.diffusion.build_diffusion`)."""
    from research.pmg.models.diffusion import build_diffusion

    return build_diffusion(cfg.models.diffusion, runtime, source=cfg.source, tokenizer_dir=tokenizers.diffusion)


def build_clip_parts(cfg: PMGConfig, runtime: Runtime, tokenizers: TokenizerPaths):
    """The frozen CLIP scorer (see :func:`research.pmg.models.clip.build_clip`)."""
    from research.pmg.models.clip import build_clip

    return build_clip(cfg.models.clip, runtime, source=cfg.source, tokenizer_dir=tokenizers.clip)
