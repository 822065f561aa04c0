"""The architectures the plan counts, resolved from a config without building anything.

Llama is ``models.llm`` itself. The Stable Diffusion parts and the CLIP scorer come, in this order, from:

1. the model folder's ``config.json`` files when ``models.diffusion.path`` / ``models.clip.path`` exists
   (``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json``; the CLIP folder's ``config.json``);
2. the architecture mappings of the config (``models.diffusion.unet`` ...) when the path is empty, as the
   runtime builds random-init models from them;
3. a known architecture when the path is set but does not exist yet (planning before converting weights):
   Stable Diffusion 2.1 (768 px, v-prediction) when ``models.diffusion.scheduler.prediction_type`` is
   ``v_prediction``, the only SD release PMG's configs can name that predicts v, otherwise Stable Diffusion 1.5;
   CLIP ViT-L/14 for the scorer. Their fields are those of the Hugging Face ``config.json`` files.

Missing keys take the defaults of the diffusers / transformers classes (``UNet2DConditionModel``,
``AutoencoderKL``, ``CLIPTextConfig``, ``CLIPVisionConfig``), copied here and checked against those classes in
``tests/test_plan.py``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research.pmg.config import ClipConfig, ConfigError, DiffusionConfig
from research.pmg.errors import short_repr

UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu", "norm_num_groups": 32,
    "norm_eps": 1e-05, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}
# UNet options that add or change layers the walk does not model: they must keep these default values.
# (num_attention_heads: diffusers itself refuses it; attention_head_dim is the head count, a naming issue kept
# for compatibility.)
UNET_UNMODELLED = ("num_attention_heads", "only_cross_attention", "reverse_transformer_layers_per_block",
                   "encoder_hid_dim", "encoder_hid_dim_type", "dual_cross_attention", "class_embed_type",
                   "addition_embed_type", "addition_time_embed_dim", "num_class_embeds", "resnet_time_scale_shift",
                   "resnet_skip_time_act", "time_embedding_type", "time_embedding_act_fn", "timestep_post_act",
                   "time_cond_proj_dim", "projection_class_embeddings_input_dim", "attention_type",
                   "class_embeddings_concat", "mid_block_only_cross_attention", "cross_attention_norm")
VAE_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215, "shift_factor": None,
    "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}
# The architecture fields of CLIPTextConfig / CLIPVisionConfig the counts read (other keys are ignored).
CLIP_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
}
CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
}
CLIP_PROJECTION_DEFAULT = 512
SIZE_FIELDS = {"sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
               "norm_num_groups", "cross_attention_dim", "transformer_layers_per_block", "attention_head_dim",
               "time_embedding_dim", "conv_in_kernel", "conv_out_kernel", "latent_channels",
               *CLIP_TEXT_DEFAULTS, *CLIP_VISION_DEFAULTS}

# Known architectures, from the Hugging Face config.json files of the releases.
_SD_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
           "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
           "layers_per_block": 2, "norm_num_groups": 32}
KNOWN_SD: dict[str, dict[str, dict[str, Any]]] = {
    "Stable Diffusion 1.5": {  # runwayml/stable-diffusion-v1-5
        "unet": {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8,
                 "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2},
        "vae": {**_SD_VAE, "sample_size": 512},
        "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768},
    },
    "Stable Diffusion 2.1": {  # stabilityai/stable-diffusion-2-1 (768 px, v-prediction)
        "unet": {"sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                 "use_linear_projection": True, "upcast_attention": True,
                 "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2},
        "vae": {**_SD_VAE, "sample_size": 768},
        "text_encoder": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                         "num_attention_heads": 16, "max_position_embeddings": 77, "projection_dim": 512},
    },
}
CLIP_VIT_L14 = {  # openai/clip-vit-large-patch14
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "max_position_embeddings": 77, "vocab_size": 49408},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "patch_size": 14, "image_size": 224},
    "projection_dim": 768,
}


@dataclass
class Arch:
    """A complete architecture (every field the counts read), where it came from (for the report) and how errors
    name it (the config file too, when it came from one)."""

    fields: dict[str, Any]
    source: str
    where: str = ""

    def __post_init__(self) -> None:
        self.where = self.where or self.source


@dataclass
class ClipArch:
    text: dict[str, Any]
    vision: dict[str, Any]
    projection_dim: int
    source: str


def known_sd_name(cfg: DiffusionConfig) -> str:
    return "Stable Diffusion 2.1" if cfg.scheduler.prediction_type == "v_prediction" else "Stable Diffusion 1.5"


def diffusion_archs(cfg: DiffusionConfig, config_file: str = "") -> dict[str, Arch]:
    """``{"unet", "vae", "text_encoder"}`` architectures of ``cfg`` (see the module docstring for the order).
    ``config_file`` names the YAML file in errors about its mappings."""
    out = {}
    root = Path(cfg.path) if cfg.path else None
    for name, defaults, strict in (("unet", UNET_DEFAULTS, True), ("vae", VAE_DEFAULTS, True),
                                   ("text_encoder", CLIP_TEXT_DEFAULTS, False)):
        where = f"{config_file}: " if config_file else ""
        if root is None:
            raw, source = getattr(cfg, name), f"models.diffusion.{name}"
            where += source
            check_keys(raw, defaults, where, strict)
        elif root.exists():
            file = root / name / "config.json"
            raw, source = read_json(file), str(file)
        else:
            known = known_sd_name(cfg)
            raw, source = KNOWN_SD[known][name], f"{known} (assumed: {root} not found)"
        if root is not None:
            where = source
            check_keys(raw, defaults, where, strict=False)
        out[name] = Arch({**defaults, **{k: v for k, v in raw.items() if k in defaults}}, source, where)
    check_unet(out["unet"])
    check_vae(out["vae"])
    return out


def clip_arch(cfg: ClipConfig, config_file: str = "") -> ClipArch:
    """The CLIP scorer's text and vision towers and projection width."""
    if not cfg.path:
        raw = {"text_config": cfg.text_config, "vision_config": cfg.vision_config, "projection_dim": cfg.projection_dim}
        source = "models.clip"
    elif Path(cfg.path).exists():
        file = Path(cfg.path) / "config.json"
        raw, source = read_json(file), str(file)
    else:
        raw, source = CLIP_VIT_L14, f"CLIP ViT-L/14 (assumed: {cfg.path} not found)"
    towers = []
    for key, defaults in (("text_config", CLIP_TEXT_DEFAULTS), ("vision_config", CLIP_VISION_DEFAULTS)):
        tower = raw.get(key) or {}
        if not isinstance(tower, dict):
            raise ConfigError(f"{source}: {key} must be a mapping")
        where = f"{source}: {key}" if cfg.path else f"{config_file}: models.clip.{key}" if config_file else \
            f"models.clip.{key}"
        check_keys(tower, defaults, where, strict=False)
        towers.append({**defaults, **{k: v for k, v in tower.items() if k in defaults}})
    projection = raw.get("projection_dim") or CLIP_PROJECTION_DEFAULT
    check_keys({"projection_dim": projection}, CLIP_TEXT_DEFAULTS, source, strict=False)
    return ClipArch(towers[0], towers[1], int(projection), source)


def read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise ConfigError(f"{file}: not found (the model folder exists but lacks this config; see ckpt_convert)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: top level must be a mapping")
    return raw


def check_keys(raw: dict[str, Any], defaults: dict[str, Any], where: str, strict: bool) -> None:
    """Mappings written in a config are checked like the runtime checks them: diffusers classes take no unknown
    keys (``strict``); transformers configs take many common ones, of which the plan reads the listed fields.
    The sizes the counts read must be positive integers (or lists of them)."""
    if strict:
        unknown = sorted(k for k in raw if k not in defaults)
        if unknown:
            raise ConfigError(f"{where}: unknown field '{unknown[0]}'")
    for key, value in raw.items():
        if key in SIZE_FIELDS and key in defaults and value is not None:
            items = value if isinstance(value, (list, tuple)) else [value]
            if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
                raise ConfigError(f"{where}: field '{key}' must be a positive integer (or a list of them), "
                                  f"got {short_repr(value)}")


def check_unet(arch: Arch) -> None:
    """Refuse UNet options the layer walk does not model, rather than count a different network."""
    fields = arch.fields
    for key in UNET_UNMODELLED:
        if fields[key] != UNET_DEFAULTS[key]:
            raise ConfigError(f"{arch.where}: {key} = {short_repr(fields[key])} is not modelled by the plan "
                              f"(only {UNET_DEFAULTS[key]!r})")
    _check_blocks(arch, {"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                         "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")})
    n = len(fields["block_out_channels"])
    for key in ("layers_per_block", "attention_head_dim", "transformer_layers_per_block", "cross_attention_dim"):
        if isinstance(fields[key], (list, tuple)) and len(fields[key]) != n:
            raise ConfigError(f"{arch.where}: {key} must be one number or one per block_out_channels ({n})")
    cross = fields["cross_attention_dim"]
    if isinstance(cross, (list, tuple)) and len(set(cross)) > 1:
        raise ConfigError(f"{arch.where}: cross_attention_dim differing per block is not modelled by the plan")
    heads = fields["attention_head_dim"]  # diffusers' name for the number of heads
    for c, h in zip(fields["block_out_channels"], heads if isinstance(heads, (list, tuple)) else [heads] * n):
        if c % h:
            raise ConfigError(f"{arch.where}: block_out_channels {c} must be divisible by its attention_head_dim "
                              f"({h} heads)")
    if fields["mid_block_type"] not in ("UNetMidBlock2DCrossAttn", None):
        raise ConfigError(f"{arch.where}: mid_block_type {short_repr(fields['mid_block_type'])} is not modelled by "
                          "the plan (only UNetMidBlock2DCrossAttn or none)")


def check_vae(arch: Arch) -> None:
    _check_blocks(arch, {"down_block_types": ("DownEncoderBlock2D",), "up_block_types": ("UpDecoderBlock2D",)})


def _check_blocks(arch: Arch, kinds: dict[str, tuple[str, ...]]) -> None:
    fields = arch.fields
    for key in ("block_out_channels", *kinds):
        if not isinstance(fields[key], (list, tuple)) or not fields[key]:
            raise ConfigError(f"{arch.where}: {key} must be a non-empty list, got {short_repr(fields[key])}")
    n = len(fields["block_out_channels"])
    for key, allowed in kinds.items():
        if len(fields[key]) != n:
            raise ConfigError(f"{arch.where}: {key} must have one entry per block_out_channels ({n})")
        for kind in fields[key]:
            if kind not in allowed:
                raise ConfigError(f"{arch.where}: {key}: {short_repr(kind)} is not modelled by the plan "
                                  f"(only {', '.join(allowed)})")
    groups = fields["norm_num_groups"]
    if any(c % groups for c in fields["block_out_channels"]):
        raise ConfigError(f"{arch.where}: block_out_channels {short_repr(fields['block_out_channels'])} must be "
                          f"divisible by norm_num_groups ({groups})")
