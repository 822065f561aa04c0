"""The generator of PMG: Stable Diffusion parts from MindONE, from a local diffusers folder or random init.

Mirrors a diffusers pipeline's components (``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
``scheduler``) so the generation and training stages wire them together the way diffusers users expect.
Everything here is frozen: PMG trains only the soft-preference parts.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mindspore import nn

from research.pmg.config import ConfigError, DiffusionConfig, SchedulerConfig
from research.pmg.models.llama import freeze
from research.pmg.runtime import Runtime

_SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpm_solver": "DPMSolverMultistepScheduler"}


@dataclass
class DiffusionParts:
    """Frozen Stable Diffusion components.

    ``unet(latents (b, c, h, w), t (b,), encoder_hidden_states (b, n, ctx_dim))`` predicts noise or v;
    ``vae`` maps images ``(b, 3, H, W)`` in [-1, 1] to latents ``(b, c, H/f, W/f)`` and back;
    ``text_encoder(ids (b, tokenizer_max_length))[0]`` gives ``(b, n, ctx_dim)``.
    """

    unet: nn.Cell
    vae: nn.Cell
    text_encoder: nn.Cell
    tokenizer: Any
    scheduler: Any

    @property
    def cross_attention_dim(self) -> int:
        """Width of the UNet's text conditioning (768 for SD 1.x, 1024 for SD 2.x): the soft embedding maps to it."""
        dim = self.unet.config.cross_attention_dim
        return dim[0] if isinstance(dim, (list, tuple)) else int(dim)


def build_diffusion(cfg: DiffusionConfig, runtime: Runtime, *, source: str = "config",
                    tokenizer_dir: str | Path | None = None) -> DiffusionParts:
    """Build the frozen SD parts from ``cfg.path`` (a local diffusers folder) or from ``cfg``'s architectures.

    Random-init models need a CLIP tokenizer folder ``tokenizer_dir`` (tiny models build one offline).
    """
    from mindone.diffusers import AutoencoderKL, UNet2DConditionModel
    from mindone.transformers import CLIPTextModel
    from transformers import CLIPTextConfig

    from research.pmg.models.tokenizers import load_clip_tokenizer
    from research.pmg.models.weights import load_pretrained

    dtype = runtime.compute_dtype
    if cfg.path:
        root = Path(cfg.path)
        for sub in ("unet", "vae", "text_encoder", "tokenizer"):
            if not (root / sub).is_dir():
                raise ConfigError(f"{source}: models.diffusion.path: {root} has no '{sub}' folder (expected a "
                                  "diffusers-format Stable Diffusion folder; see ckpt_convert sd)")
        what = f"{source}: models.diffusion.path"
        unet = load_pretrained(lambda: UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", local_files_only=True, mindspore_dtype=dtype), root / "unet", what=what)
        vae = load_pretrained(lambda: AutoencoderKL.from_pretrained(
            root, subfolder="vae", local_files_only=True, mindspore_dtype=dtype), root / "vae", what=what)
        text_encoder = load_pretrained(lambda: CLIPTextModel.from_pretrained(
            root / "text_encoder", local_files_only=True, mindspore_dtype=dtype), root / "text_encoder", what=what)
        tokenizer = load_clip_tokenizer(root / "tokenizer", cfg.tokenizer_max_length)
        scheduler = build_scheduler(cfg.scheduler, root / "scheduler")
    else:
        check_arch(UNet2DConditionModel, cfg.unet, f"{source}: models.diffusion.unet")
        check_arch(AutoencoderKL, cfg.vae, f"{source}: models.diffusion.vae")
        check_arch(CLIPTextConfig, cfg.text_encoder, f"{source}: models.diffusion.text_encoder")
        if tokenizer_dir is None:
            raise ValueError("random-init diffusion models need a tokenizer_dir (see models.tokenizers)")
        # Random-init parts compute in the runtime's precision too, as loaded weights do (mindspore_dtype above).
        unet = UNet2DConditionModel.from_config(cfg.unet).to(dtype)
        vae = AutoencoderKL.from_config(cfg.vae).to(dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder))
        tokenizer = load_clip_tokenizer(tokenizer_dir, cfg.tokenizer_max_length)
        scheduler = build_scheduler(cfg.scheduler)
    parts = DiffusionParts(unet=freeze(unet), vae=freeze(vae), text_encoder=freeze(text_encoder),
                           tokenizer=tokenizer, scheduler=scheduler)
    check_eos(text_encoder.config, tokenizer, f"{source}: models.diffusion")
    vocab = text_encoder.config.vocab_size
    if len(tokenizer) > vocab:
        raise ConfigError(f"{source}: models.diffusion: tokenizer has {len(tokenizer)} tokens but the text encoder "
                          f"only {vocab} embeddings")
    return parts


def build_scheduler(cfg: SchedulerConfig, folder: str | Path | None = None):
    """A MindONE noise scheduler: from a diffusers ``scheduler/`` folder when given, else from ``cfg``.

    With a folder, ``cfg.name`` still chooses the class (e.g. DDIM for sampling with SD's DDPM config).
    """
    import mindone.diffusers as md

    cls = getattr(md, _SCHEDULERS[cfg.name])
    if folder is not None and Path(folder, "scheduler_config.json").is_file():
        return cls.from_pretrained(str(folder), local_files_only=True)
    # Stable Diffusion's own scheduler settings: no x0 clipping (latents are not in [-1, 1]), and for DDIM
    # timesteps offset by one with the final alpha taken from the schedule.
    sd_settings = {"ddpm": dict(clip_sample=False),
                   "ddim": dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                   "dpm_solver": dict(steps_offset=1)}[cfg.name]
    return cls(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
               beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, **sd_settings)


def check_arch(cls: type, arch: dict[str, Any], field: str) -> None:
    """Fail on architecture keys that ``cls`` does not accept (diffusers would only warn and ignore them)."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    if cls.__name__.endswith("Config"):  # transformers configs take the common PretrainedConfig keys too
        from transformers import PretrainedConfig

        accepted |= set(PretrainedConfig().to_dict())
    unknown = sorted(set(arch) - accepted)
    if unknown:
        raise ConfigError(f"{field}: unknown field '{unknown[0]}' for {cls.__name__}")


def check_eos(text_config, tokenizer, field: str) -> None:
    """CLIP text models pool the hidden state at ``eos_token_id`` (2 means the legacy argmax rule of the
    original SD 1.x configs). Any other id the tokenizer does not use as its end token would pool at a
    fixed wrong position and give every text the same embedding."""
    eos = text_config.eos_token_id
    if eos != 2 and eos != tokenizer.eos_token_id:
        raise ConfigError(f"{field}: text eos_token_id is {eos} but the tokenizer's end token is "
                          f"{tokenizer.eos_token_id}; set eos_token_id (and bos_token_id) to match")
