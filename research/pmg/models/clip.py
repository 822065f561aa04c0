"""The CLIP scorer of PMG (mindone.transformers CLIPModel), from a local Hugging Face folder or random init.

CLIP embeds generated images and keyword texts so that personalization (d_p) and accuracy (d_t) can be
compared on one scale; see the paper's balancing of preference and target.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mindspore import nn

from research.pmg.config import ClipConfig, ConfigError
from research.pmg.models.diffusion import check_arch, check_eos
from research.pmg.models.llama import freeze
from research.pmg.runtime import Runtime


@dataclass
class ClipParts:
    """A frozen CLIP model and its tokenizer.

    ``model.get_text_features(ids (b, n))`` and ``model.get_image_features(pixels (b, 3, s, s))`` both
    return ``(b, projection_dim)``.
    """

    model: nn.Cell
    tokenizer: Any

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)


def clip_image_processor(parts: ClipParts, folder: str | Path = ""):
    """The CLIP folder's ``CLIPImageProcessor`` (its ``preprocessor_config.json``), else OpenAI CLIP's resize,
    centre crop and normalisation at ``parts.image_size``. A config that does not load is a :class:`ConfigError`."""
    from transformers import CLIPImageProcessor

    config = Path(folder, "preprocessor_config.json") if folder else None
    if config is not None and config.is_file():
        try:
            return CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: JSON that is not an object
            raise ConfigError(f"{config}: not a usable CLIP image processor config: {exc}") from None
    size = parts.image_size
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_clip(cfg: ClipConfig, runtime: Runtime, *, source: str = "config",
               tokenizer_dir: str | Path | None = None) -> ClipParts:
    """Build CLIP from ``cfg.path`` (a local ``CLIPModel`` folder) or random init from its sub-configs."""
    from mindone.transformers import CLIPModel
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    from research.pmg.models.tokenizers import load_clip_tokenizer
    from research.pmg.models.weights import load_pretrained

    if cfg.path:
        root = Path(cfg.path)
        if not (root / "config.json").is_file():
            raise ConfigError(f"{source}: models.clip.path: {root} has no config.json (expected a Hugging Face "
                              "CLIPModel folder; see ckpt_convert clip)")
        model = load_pretrained(lambda: CLIPModel.from_pretrained(str(root), local_files_only=True,
                                                                  mindspore_dtype=runtime.compute_dtype),
                                root, what=f"{source}: models.clip.path")
        tokenizer = load_clip_tokenizer(root, model.config.text_config.max_position_embeddings)
    else:
        check_arch(CLIPTextConfig, cfg.text_config, f"{source}: models.clip.text_config")
        check_arch(CLIPVisionConfig, cfg.vision_config, f"{source}: models.clip.vision_config")
        if tokenizer_dir is None:
            raise ValueError("a random-init CLIP needs a tokenizer_dir (see models.tokenizers)")
        model = CLIPModel(CLIPConfig(text_config=cfg.text_config, vision_config=cfg.vision_config,
                                     projection_dim=cfg.projection_dim))
        tokenizer = load_clip_tokenizer(tokenizer_dir, model.config.text_config.max_position_embeddings)
    check_eos(model.config.text_config, tokenizer, f"{source}: models.clip")
    return ClipParts(model=freeze(model), tokenizer=tokenizer)
