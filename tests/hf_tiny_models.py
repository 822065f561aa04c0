"""Tiny Hugging Face (PyTorch) models saved the way users download them: the inputs of the converter tests.

Sizes follow configs/tiny.yaml, so converted weights load into the same tiny PMG models the rest of the
suite builds. Everything is seeded; nothing is downloaded (the CLIP tokenizer is the offline tiny one).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from tests.tiny_models import TINY_CONFIG

TINY = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))["models"]
# A Llama with grouped-query attention and non-default eps/theta, so the parity test proves they carry over.
LLAMA_ARCH = dict(vocab_size=TINY["llm"]["vocab_size"], hidden_size=TINY["llm"]["hidden_size"],
                  intermediate_size=TINY["llm"]["intermediate_size"], num_hidden_layers=TINY["llm"]["num_layers"],
                  num_attention_heads=TINY["llm"]["num_heads"], num_key_value_heads=2, rms_norm_eps=1e-6,
                  rope_theta=500000.0, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)


def save_llama(folder: Path, *, dtype: torch.dtype = torch.float32, shard_size: str = "100KB", seed: int = 0,
               **overrides):
    """A tiny ``LlamaForCausalLM`` saved as sharded safetensors (index + shards); returns the model (fp32, eval)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**LLAMA_ARCH, **overrides})).eval()
    with torch.no_grad():  # random-init norms are all ones; perturb them so a swapped norm would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.to(dtype).save_pretrained(folder, max_shard_size=shard_size, safe_serialization=True)
    return model.float()


def save_clip(folder: Path, tokenizer_dir: Path, *, seed: int = 0):
    """A tiny ``CLIPModel`` with tokenizer files, as an HF CLIP folder; returns the model (eval)."""
    from transformers import CLIPConfig, CLIPModel

    clip = TINY["clip"]
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=clip["text_config"], vision_config=clip["vision_config"],
                                 projection_dim=clip["projection_dim"])).eval()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer_dir / name, folder / name)
    return model


def save_stable_diffusion(folder: Path, tokenizer_dir: Path, *, seed: int = 0, unet: dict | None = None,
                          text_encoder: dict | None = None, scheduler=None):
    """A tiny Stable Diffusion pipeline (tiny.yaml's UNet, VAE, text encoder) saved in diffusers format.

    ``unet`` and ``text_encoder`` change fields of tiny.yaml's architectures and ``scheduler`` replaces SD 1.x's
    DDPM scheduler (tests/tiny_sd2.py makes an SD 2.x this way).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sd = TINY["diffusion"]
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**{**sd["unet"], **(unet or {})}), vae=AutoencoderKL(**sd["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**{**sd["text_encoder"], **(text_encoder or {})})),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        scheduler=scheduler or DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                             clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():  # random-init norms are ones and zeros; perturb them so a swapped norm would show
        for model in (pipe.unet, pipe.vae, pipe.text_encoder):
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(0.1 * torch.randn_like(param))
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def write_single_file(diffusers_dir: Path, path: Path, *, open_clip: bool = False, ema: bool = False,
                      extra: dict[str, np.ndarray] | None = None) -> None:
    """Write a diffusers folder as an original-layout single-file checkpoint (what CompVis/Stability publish).

    Uses the converter's own name correspondence reversed; the test that uses it also checks the result
    with MindONE's independent ``single_file_utils`` conversion. ``open_clip`` writes SD 2's OpenCLIP text
    tower (fused q/k/v, plus one unused extra layer and a projection); ``ema`` adds a ``model_ema`` UNet copy
    with different values.
    """
    from safetensors.numpy import load_file, save_file

    from ckpt_convert import sd

    def load(name, file):
        return load_file(diffusers_dir / name / file), json.loads((diffusers_dir / name / "config.json").read_text())

    unet, unet_cfg = load("unet", "diffusion_pytorch_model.safetensors")
    vae, vae_cfg = load("vae", "diffusion_pytorch_model.safetensors")
    text, text_cfg = load("text_encoder", "model.safetensors")
    out = {"betas": np.linspace(1e-4, 2e-2, 1000, dtype=np.float32)}
    for name, original in sd.unet_original_names(unet, unet_cfg).items():
        out["model.diffusion_model." + original] = unet[name]
        if ema:
            out["model_ema." + ("diffusion_model." + original).replace(".", "")] = unet[name] + 1
    for name, original in sd.vae_original_names(vae, vae_cfg).items():
        conv = sd._VAE_CONV_ATTENTION.search(original)  # 1x1 convolutions in the original VAE's attention
        out["first_stage_model." + original] = vae[name][:, :, None, None] if conv else vae[name]
    if not open_clip:
        out.update({"cond_stage_model.transformer." + name: value for name, value in text.items()})
    else:
        for name, value in text.items():
            original, _, index = sd.open_clip_source(name, value.shape)
            if index is None:
                out[original] = value
            elif index == 0:
                out[original] = np.concatenate([text[name.replace(".q_proj.", f".{x}_proj.")] for x in "qkv"])
        layers = text_cfg["num_hidden_layers"]
        for key in [k for k in out if ".resblocks.0." in k]:
            out[key.replace(".resblocks.0.", f".resblocks.{layers}.")] = out[key] + 1
        width = text_cfg["hidden_size"]
        out[sd._OPEN_CLIP + "text_projection"] = np.eye(width, dtype=np.float32)
    out.update(extra or {})
    save_file(out, path, metadata={"format": "pt"})


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cut ``path`` to a fraction of its size, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"model-\d+-of-\d+\.safetensors", p.name))
