"""The ``train:`` section: optimisation, loss scaling, conditioning weights and checkpoints of the train stage."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from research.pmg.config.checks import check, check_range

@dataclass
class TrainConfig:
    """Optimisation of the soft-preference parameters (prefix, multimodal tokens, map: the only trainable ones)."""

    batch_size: int = 4  # per worker
    lr: float = 5e-6
    weight_decay: float = 0.01
    max_steps: int = 1000  # optimizer steps
    warmup_steps: int = 100  # linear warm-up, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.0
    grad_accum_steps: int = 1
    grad_clip: float = 1.0  # max global norm; 0 disables clipping
    # auto: dynamic when the runtime computes in fp16 (its range overflows), none for bf16 and fp32
    loss_scale: Literal["auto", "none", "static", "dynamic"] = "auto"
    initial_loss_scale: float = 65536.0
    # Recompute activations in the backward pass instead of keeping them (LLM layers and UNet blocks): less
    # memory, about one more forward pass of time. Off on CPU, where memory is not the limit.
    recompute: bool = False
    # Conditioning of the UNet during training: which keyword groups go with the soft embedding, and weights.
    conditioning: Literal["full", "soft_only"] = "full"  # full: target + preference keywords + soft; soft_only: target + soft
    target_weight: float = 1.0  # w_t
    preference_weight: float = 1.0  # w_p
    soft_weight: float = 1.0  # w_s
    # Negative-item term (off at 0): w * softplus(target error - error on another sample's target), see
    # research.pmg.train.step.PMGDiffusionLoss
    negative_weight: float = 0.0
    keywords: str = ""  # keywords JSONL; "" = the keyword stage's output (research/pmg/layout.py)
    eval_every: int = 100  # steps between held-out losses; 0 = only at the end
    eval_batches: int = 4
    save_every: int = 100  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3  # checkpoints kept
    log_every: int = 10

    def validate(self, where: str) -> None:
        check_range(self.batch_size, 1, 1 << 16, where, "batch_size")
        check(self.lr > 0, where, "lr", "must be > 0")
        check(self.weight_decay >= 0, where, "weight_decay", "must be >= 0")
        check_range(self.max_steps, 1, 10 ** 9, where, "max_steps")
        check(0 <= self.warmup_steps <= self.max_steps, where, "warmup_steps", "must be in [0, max_steps]")
        check(0 <= self.min_lr_ratio <= 1, where, "min_lr_ratio", "must be in [0, 1]")
        check_range(self.grad_accum_steps, 1, 1 << 16, where, "grad_accum_steps")
        check(self.grad_clip >= 0, where, "grad_clip", "must be >= 0")
        check(1 <= self.initial_loss_scale <= 2.0 ** 32, where, "initial_loss_scale", "must be in [1, 2**32]")
        check(self.negative_weight >= 0, where, "negative_weight", "must be >= 0 (0 = off)")
        for name in ("eval_every", "save_every", "log_every"):
            check_range(getattr(self, name), 0, 10 ** 9, where, name)
        check_range(self.eval_batches, 0, 1 << 20, where, "eval_batches")
        check_range(self.keep_last, 1, 10_000, where, "keep_last")
