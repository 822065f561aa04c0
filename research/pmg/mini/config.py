"""Configs of the PMG-mini image trainers (``configs/mini/clip.yaml``, ``configs/mini/sd.yaml``), validated at load.

They reuse the project's loader (``base:`` files, ``--set`` overrides, unknown keys and bad values named with the
file and field) and its ``runtime`` section; everything else is specific to training the mini models, so it
lives here and not in :mod:`research.pmg.config`. Defaults live here and nowhere else.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from research.pmg.config import (SEED_LIMIT, ConfigError, RuntimeConfig, SchedulerConfig, TrainConfig, check,
                                 check_range, load_dataclass_config)
from research.pmg.data.sticker_set import THEMES
from research.pmg.errors import short_repr


@dataclass
class StickerImagesConfig:
    """The image/caption set: every single-code-point Twemoji of ``themes`` (see ``research.pmg.data.sticker_set``)."""

    image_size: int = 32  # pixels; read as evaluation reads images (over white, centre crop, bicubic)
    themes: list[str] = field(default_factory=lambda: list(THEMES))

    def validate(self, where: str) -> None:
        check_range(self.image_size, 8, 8192, where, "image_size")
        check(bool(self.themes), where, "themes", "must name at least one theme")
        for theme in self.themes:
            check(theme in THEMES, where, "themes", f"{short_repr(theme)} is not one of {list(THEMES)}")


@dataclass
class OptimConfig:
    """One optimisation run: AdamW, linear warm-up then cosine decay, clipping; batches are seeded by the step."""

    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_steps: int = 500
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global norm; 0 disables clipping
    save_every: int = 100  # steps between checkpoints (and always at the end)
    keep_last: int = 2
    log_every: int = 20

    def validate(self, where: str) -> None:
        check_range(self.batch_size, 2, 1 << 16, where, "batch_size")
        check_range(self.max_steps, 1, 10 ** 9, where, "max_steps")
        check_range(self.save_every, 1, 10 ** 9, where, "save_every")
        check_range(self.log_every, 1, 10 ** 9, where, "log_every")
        self.as_train_config().validate(where)  # lr, weight decay, warm-up, clipping, keep_last

    def as_train_config(self) -> TrainConfig:
        """The project's train section with these values (for its LR schedule and jitted train step)."""
        return TrainConfig(batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                           max_steps=self.max_steps, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
                           grad_clip=self.grad_clip, keep_last=self.keep_last, save_every=self.save_every,
                           log_every=self.log_every)


@dataclass
class MiniTokenizerConfig:
    """The CLIP BPE tokenizer shared by CLIP-mini and the mini SD text encoder (captions + bundled corpus)."""

    vocab_size: int = 1000
    caption_repeats: int = 4  # captions are repeated in the BPE corpus so caption words become whole tokens

    def validate(self, where: str) -> None:
        check(self.vocab_size >= 600, where, "vocab_size", "must be >= 600 (514 byte symbols + merges)")
        check_range(self.vocab_size, 600, 1 << 20, where, "vocab_size")
        check_range(self.caption_repeats, 1, 1000, where, "caption_repeats")


@dataclass
class ClipModelConfig:
    """CLIPModel architecture (keyword arguments of transformers' CLIPTextConfig / CLIPVisionConfig).

    ``text_config`` must not set ``vocab_size``, ``bos_token_id`` or ``eos_token_id``: they come from the tokenizer.
    """

    projection_dim: int = 64
    # log of the fixed contrastive temperature's inverse (CLIP learns it; MindSpore's fused AdamWeightDecay
    # cannot update a 0-d parameter, and a fixed one is as good at this size)
    logit_scale: float = 3.4
    text_config: dict[str, Any] = field(default_factory=dict)
    vision_config: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        check_range(self.projection_dim, 1, 1 << 16, where, "projection_dim")
        check(0.0 < self.logit_scale <= 4.6052, where, "logit_scale", "must be in (0, ln 100]")
        for key in ("vocab_size", "bos_token_id", "eos_token_id"):
            check(key not in self.text_config, where, f"text_config.{key}", "is set from the tokenizer; remove it")


@dataclass
class ClipTrainConfig(OptimConfig):
    augment: bool = True  # random flips, shifts over white, blur and colour jitter (see images.augment)


@dataclass
class MiniClipConfig:
    """``configs/mini/clip.yaml``: CLIP-mini, trained contrastively on sticker images and their captions."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: StickerImagesConfig = field(default_factory=StickerImagesConfig)
    tokenizer: MiniTokenizerConfig = field(default_factory=MiniTokenizerConfig)
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    train: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    export: str = "research/pmg/assets/mini/clip"  # the CLIPModel folder written at the end (weights committed)
    source: str = field(default="<defaults>", metadata={"internal": True})

    def validate(self, where: str) -> None:
        check(bool(self.export), where, "export", "must not be empty")


@dataclass
class VaeTrainConfig(OptimConfig):
    kl_weight: float = 1e-6  # weight of the KL term next to the MSE reconstruction loss
    # Every n-th sticker (catalogue order) is kept out of the VAE's training, so that its reconstruction PSNR is
    # measured on stickers it never saw (the UNet still trains on all of them); 0 trains on every sticker.
    holdout_every: int = 0

    def validate(self, where: str) -> None:
        super().validate(where)
        check(self.kl_weight >= 0, where, "kl_weight", "must be >= 0")
        check(self.holdout_every == 0 or self.holdout_every >= 2, where, "holdout_every", "must be 0 or >= 2")


@dataclass
class UnetTrainConfig(OptimConfig):
    cond_dropout: float = 0.1  # share of texts replaced by the empty one (classifier-free guidance)
    # Which texts of a sticker the UNet is conditioned on, one drawn per row and step (research.pmg.mini.sd_texts):
    # its caption, and the target / theme keyword texts PMG's generation conditions on.
    texts: list[str] = field(default_factory=lambda: ["caption", "target", "theme"])
    snr_gamma: float = 0.0  # min-SNR-gamma loss weighting (sd_train.unet_loss_cell); 0 = plain MSE

    def validate(self, where: str) -> None:
        super().validate(where)
        check(0.0 <= self.cond_dropout < 1.0, where, "cond_dropout", "must be in [0, 1)")
        check(0.0 <= self.snr_gamma < 1e6, where, "snr_gamma", "must be >= 0 (0 = off)")
        from research.pmg.mini.sd_texts import VARIANTS

        check(bool(self.texts) and all(t in VARIANTS for t in self.texts) and len(set(self.texts)) == len(self.texts),
               where, "texts", f"must be distinct names out of {list(VARIANTS)}")


@dataclass
class MiniEvalConfig:
    """Retrieval check of generated images: ``captions_per_theme`` captions per theme, one image each."""

    captions_per_theme: int = 7
    steps: int = 25  # DDIM steps
    guidance: float = 3.0
    seed: int = 0
    micro_batch: int = 49

    def validate(self, where: str) -> None:
        check_range(self.captions_per_theme, 1, 10_000, where, "captions_per_theme")
        check_range(self.steps, 1, 10_000, where, "steps")
        check(self.guidance >= 1.0, where, "guidance", "must be >= 1")
        check_range(self.micro_batch, 1, 1 << 16, where, "micro_batch")
        check(0 <= self.seed < SEED_LIMIT, where, "seed", "must be in [0, 2**32)")


@dataclass
class MiniSDConfig:
    """``configs/mini/sd.yaml``: a small latent Stable Diffusion (VAE, then UNet) on CLIP-mini's frozen text tower."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    data: StickerImagesConfig = field(default_factory=StickerImagesConfig)
    clip: str = "research/pmg/assets/mini/clip"  # CLIP-mini folder: text encoder + tokenizer, and the judge
    tokenizer_max_length: int = 32
    vae: dict[str, Any] = field(default_factory=dict)  # AutoencoderKL keyword arguments
    unet: dict[str, Any] = field(default_factory=dict)  # UNet2DConditionModel keyword arguments
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    vae_train: VaeTrainConfig = field(default_factory=VaeTrainConfig)
    unet_train: UnetTrainConfig = field(default_factory=UnetTrainConfig)
    eval: MiniEvalConfig = field(default_factory=MiniEvalConfig)
    export: str = "research/pmg/assets/mini/sd"  # the diffusers folder written at the end (weights committed)
    source: str = field(default="<defaults>", metadata={"internal": True})

    def validate(self, where: str) -> None:
        check(bool(self.vae), where, "vae", "must give the AutoencoderKL architecture")
        check(bool(self.unet), where, "unet", "must give the UNet2DConditionModel architecture")
        check(bool(self.export), where, "export", "must not be empty")
        check_range(self.tokenizer_max_length, 2, 1 << 16, where, "tokenizer_max_length")
        check(self.unet.get("in_channels", 4) == self.vae.get("latent_channels", 4), where, "unet.in_channels",
               "must equal vae.latent_channels")


def load_mini_config(cls: type, path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """Load ``path`` into ``cls`` (:class:`MiniClipConfig` or :class:`MiniSDConfig`) with ``key=value`` overrides."""
    return load_dataclass_config(cls, path, overrides)  # validates every section, then the whole


def config_dict(cfg) -> dict[str, Any]:
    """The resolved config as plain data (for manifests and the run folder)."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    return out


__all__ = ["ConfigError", "MiniClipConfig", "MiniSDConfig", "load_mini_config", "config_dict"]
