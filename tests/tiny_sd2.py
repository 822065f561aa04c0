"""A tiny Stable Diffusion 2.x, built offline with diffusers/transformers (PyTorch, seeded) in diffusers format.

What makes it SD 2.x rather than SD 1.x is kept: a 1024-wide text context (OpenCLIP ViT-H's width, here from a
2-layer text encoder with OpenCLIP's exact gelu instead of CLIP's quick_gelu), linear projections into and out of
the UNet's transformer blocks, attention heads given per block as a list, upcast attention, and v-prediction with
SD 2.1's DDIM scheduler config (scaled_linear betas 0.00085..0.012, steps_offset 1). Everything else (image and
latent sizes, the VAE, the offline CLIP tokenizer) is configs/tiny.yaml's, through
:func:`tests.hf_tiny_models.save_stable_diffusion`, so the rest of the tiny PMG models fit it unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.pmg.config import PMGConfig
from tests.hf_tiny_models import save_stable_diffusion
from tests.tiny_models import tiny_config

SD2_CONTEXT = 1024
SD2_UNET = dict(cross_attention_dim=SD2_CONTEXT, use_linear_projection=True, attention_head_dim=[2, 4],
                upcast_attention=True)
SD2_TEXT_ENCODER = dict(hidden_size=SD2_CONTEXT, intermediate_size=64, num_attention_heads=8, hidden_act="gelu")
# stabilityai/stable-diffusion-2-1's scheduler/scheduler_config.json, fields that decide the numbers
SD21_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")


def _build(folder: Path, tokenizer_dir: Path, seed: int):
    from diffusers import DDIMScheduler

    return save_stable_diffusion(folder, tokenizer_dir, seed=seed, unet=SD2_UNET, text_encoder=SD2_TEXT_ENCODER,
                                 scheduler=DDIMScheduler(**SD21_SCHEDULER))


def write_tiny_sd2(folder: str | Path, tokenizer_dir: str | Path, *, seed: int = 0) -> Path:
    """Save the tiny SD 2.x (seeded) into ``folder`` as a diffusers pipeline folder; returns ``folder``.

    ``tokenizer_dir`` is a CLIP tokenizer folder (the ``tiny_tokenizers`` fixture's ``diffusion`` one).
    """
    folder = Path(folder)
    _build(folder, Path(tokenizer_dir), seed)
    return folder


@dataclass(frozen=True)
class TinySD2:
    folder: Path  # diffusers format, as a user downloads it
    converted: Path  # ckpt_convert sd's output: what models.diffusion.path names
    pipe: Any  # the diffusers StableDiffusionPipeline (PyTorch, fp32) the folder holds


_BUILT: dict[Path, TinySD2] = {}


def shared_tiny_sd2(tmp_path_factory, tokenizer_dir: Path) -> TinySD2:
    """The tiny SD 2.x and its conversion, made once per test process for every module that needs them."""
    from ckpt_convert import sd

    key = Path(tokenizer_dir)
    if key not in _BUILT:
        folder = tmp_path_factory.mktemp("tiny-sd2")
        pipe = _build(folder, key, seed=0)
        converted = tmp_path_factory.mktemp("tiny-sd2-converted") / "sd2"
        sd.convert(folder, converted)
        _BUILT[key] = TinySD2(folder=folder, converted=converted, pipe=pipe)
    return _BUILT[key]


def sd2_config(output_dir: Path, converted: Path, *overrides: str) -> PMGConfig:
    """configs/tiny.yaml with the converted tiny SD 2.x as the diffusion model (v-prediction)."""
    return tiny_config(output_dir, f"models.diffusion.path={converted}",
                       "models.diffusion.scheduler.prediction_type=v_prediction", *overrides)


def write_stage_inputs(root: Path) -> None:
    """The inputs of the training and generation stages under ``root`` (``data/``, ``keywords/keywords.jsonl``): the
    bundled sticker sample, prepared, and keywords from item metadata standing in for the LLM stage."""
    from research.pmg.config.data import DataConfig
    from research.pmg.data.prepare import prepare
    from research.pmg.records.samples import load_prepared

    prepare("stickers", DataConfig(), output_dir=str(root), progress=False)
    prepared = load_prepared(root / "data")
    items = prepared.items
    lines = [json.dumps({"id": s.id, "user_id": s.user_id, "target": s.target, "status": "ok",
                         "preference_keywords": sorted({items[h].category for h in s.history})[:8],
                         "target_keywords": [items[s.target].title, items[s.target].category]})
             for s in prepared.samples]
    (root / "keywords").mkdir()
    (root / "keywords" / "keywords.jsonl").write_text("\n".join(lines) + "\n")
