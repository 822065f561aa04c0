"""One PMG training step: the diffusion loss through frozen SD, gradients into the soft-preference parameters."""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from research.pmg.config import TrainConfig
from research.pmg.models.conditioning import assemble_context
from research.pmg.models.soft_preference import SoftPreferenceEncoder


class PMGDiffusionLoss(nn.Cell):
    """MSE between the UNet's prediction and the true noise (or v), conditioned on the assembled context.

    Inputs: prompt_ids ``(b, prompt_len)`` int32; latents ``(b, c, h, w)`` (already scaled); target_ctx and
    pref_ctx ``(b, n_text, ctx_dim)``; noise ``(b, c, h, w)``; timesteps ``(b,)`` int32. Noise and timesteps
    come from the caller's seeded NumPy generator, so a resumed run draws exactly what the original would.
    """

    def __init__(self, encoder: SoftPreferenceEncoder, unet: nn.Cell, alphas_cumprod: np.ndarray,
                 prediction_type: str, train: TrainConfig):
        super().__init__()
        self.encoder, self.unet = encoder, unet
        self.alphas_cumprod = ms.Tensor(np.asarray(alphas_cumprod, np.float32))
        self.v_prediction = prediction_type == "v_prediction"
        self.use_preference = train.conditioning == "full"
        self.weights = (train.target_weight, train.preference_weight, train.soft_weight)
        self.unet_dtype = unet.dtype if hasattr(unet, "dtype") else ms.float32

    def construct(self, prompt_ids, latents, target_ctx, pref_ctx, noise, timesteps):
        soft = self.encoder(prompt_ids)
        preference = pref_ctx if self.use_preference else None
        context = assemble_context(target_ctx, preference, soft, *self.weights)
        alpha = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        noisy = ops.sqrt(alpha) * latents + ops.sqrt(1.0 - alpha) * noise
        pred = self.unet(noisy.astype(self.unet_dtype), timesteps, encoder_hidden_states=context.astype(self.unet_dtype))[0]
        target = ops.sqrt(alpha) * noise - ops.sqrt(1.0 - alpha) * latents if self.v_prediction else noise
        return ((pred.astype(ms.float32) - target) ** 2).mean()


def build_train_step(loss_net: PMGDiffusionLoss, train: TrainConfig):
    """A jit-compiled step over MindONE's TrainStep: accumulation, loss scaling with overflow skip, clipping.

    Returns ``(step_cell, optimizer)``; ``step_cell(*loss_inputs)`` returns ``(loss,)`` and updates the
    trainable parameters every ``grad_accum_steps`` calls (gradients are all-reduced in data parallel).
    """
    from mindone.diffusers.training_utils import TrainStep
    from mindspore.amp import DynamicLossScaler, StaticLossScaler

    class _Step(TrainStep):
        def forward(self, *inputs):
            loss = self.model(*inputs)
            # TrainStep differentiates with has_aux=True, which PyNative only accepts with 2+ outputs.
            return self.scale_loss(loss), ops.stop_gradient(loss)

    params = loss_net.trainable_params()
    lr = learning_rates(train)
    optimizer = nn.AdamWeightDecay(params, learning_rate=ms.Tensor(lr), weight_decay=train.weight_decay)
    scaler = {"none": None, "static": StaticLossScaler(train.initial_loss_scale),
              "dynamic": DynamicLossScaler(train.initial_loss_scale, 2, 1000)}[train.loss_scale]
    step = _Step(loss_net, optimizer, loss_scaler=scaler, max_grad_norm=train.grad_clip or None,
                 gradient_accumulation_steps=train.grad_accum_steps,
                 gradient_accumulation_kwargs={"sync_with_dataloader": False})
    step.set_train(True)
    return step, optimizer


def learning_rates(train: TrainConfig) -> np.ndarray:
    """Per-optimizer-step learning rate: linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    steps = np.arange(train.max_steps, dtype=np.float64)
    warm = max(train.warmup_steps, 1)
    decay_len = max(train.max_steps - train.warmup_steps, 1)
    progress = np.clip((steps - train.warmup_steps) / decay_len, 0.0, 1.0)
    cosine = train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + np.cos(math.pi * progress))
    lr = np.where(steps < train.warmup_steps, (steps + 1) / warm, cosine) * train.lr
    return lr.astype(np.float32)
