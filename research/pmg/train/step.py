"""One PMG training step: the diffusion loss through frozen SD, gradients into the soft-preference parameters."""
from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from research.pmg.config import TrainConfig
from research.pmg.models.conditioning import assemble_context
from research.pmg.models.soft_preference import SoftPreferenceEncoder
from research.pmg.runtime import resolve_loss_scale


class PMGDiffusionLoss(nn.Cell):
    """MSE between the UNet's prediction and the true noise (or v), conditioned on the assembled context.

    Inputs: prompt_ids ``(b, prompt_len)`` int32; latents ``(b, c, h, w)`` (already scaled); target_ctx and
    pref_ctx ``(b, n_text, ctx_dim)``; noise ``(b, c, h, w)``; timesteps ``(b,)`` int32. Noise and timesteps
    come from the caller's seeded NumPy generator, so a resumed run draws exactly what the original would.

    With ``train.negative_weight`` w > 0 a seventh input, ``neg_latents`` ``(b, c, h, w)`` (another sample's
    target), adds a negative-item term: the same context, noise and timestep denoise the negative image too,
    and per sample i with denoising errors pos_i (target) and neg_i (negative) the loss is
    ``mean_i pos_i + w * mean_i softplus(pos_i - neg_i)``: the context should explain its own target better
    than someone else's. Softplus keeps the term bounded below (pushing neg_i up stops paying once it is
    well above pos_i). Both images go through one UNet call of 2b rows. With w = 0 the term and the seventh
    input do not exist: the loss is exactly the plain MSE.
    """

    def __init__(self, encoder: SoftPreferenceEncoder, unet: nn.Cell, alphas_cumprod: np.ndarray,
                 prediction_type: str, train: TrainConfig):
        super().__init__()
        self.encoder, self.unet = encoder, unet
        self.alphas_cumprod = ms.Tensor(np.asarray(alphas_cumprod, np.float32))
        self.v_prediction = prediction_type == "v_prediction"
        self.use_preference = train.conditioning == "full"
        self.weights = (train.target_weight, train.preference_weight, train.soft_weight)
        self.negative_weight = float(train.negative_weight)
        self.unet_dtype = unet.dtype if hasattr(unet, "dtype") else ms.float32

    def construct(self, prompt_ids, latents, target_ctx, pref_ctx, noise, timesteps, neg_latents=None):
        soft = self.encoder(prompt_ids)
        preference = pref_ctx if self.use_preference else None
        context = assemble_context(target_ctx, preference, soft, *self.weights)
        if self.negative_weight > 0:  # a Python constant: with w = 0 this branch is not even compiled
            batch = latents.shape[0]
            errors = self.squared_errors(ops.concat((latents, neg_latents)), ops.concat((context, context)),
                                         ops.concat((noise, noise)), ops.concat((timesteps, timesteps)))
            per_sample = errors.reshape(2 * batch, -1).mean(axis=1)
            pos, neg = per_sample[:batch], per_sample[batch:]
            return pos.mean() + self.negative_weight * ops.softplus(pos - neg).mean()
        return self.squared_errors(latents, context, noise, timesteps).mean()

    def squared_errors(self, latents, context, noise, timesteps):
        """Squared error of the UNet's noise (or v) prediction, elementwise: ``(b, c, h, w)`` float32."""
        alpha = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        noisy = ops.sqrt(alpha) * latents + ops.sqrt(1.0 - alpha) * noise
        pred = self.unet(noisy.astype(self.unet_dtype), timesteps, encoder_hidden_states=context.astype(self.unet_dtype))[0]
        target = ops.sqrt(alpha) * noise - ops.sqrt(1.0 - alpha) * latents if self.v_prediction else noise
        return (pred.astype(ms.float32) - target) ** 2


def build_train_step(loss_net: PMGDiffusionLoss, train: TrainConfig, precision: str = "fp32"):
    """A jit-compiled step over MindONE's TrainStep: accumulation, loss scaling with overflow skip, clipping.

    Returns ``(step_cell, optimizer)``; ``step_cell(*loss_inputs)`` returns ``(scaled_loss, loss)`` and updates
    the trainable parameters every ``grad_accum_steps`` calls. ``precision`` (the runtime's) decides
    ``train.loss_scale: auto``: dynamic in fp16, none otherwise (gradients are all-reduced in data parallel).
    ``loss`` is the one to log: this micro-batch's loss, averaged over the data-parallel workers (one scalar
    all-reduce inside the step), so it is the loss of the whole global batch, as one worker would see it.
    ``scaled_loss`` is divided by ``grad_accum_steps`` and is this worker's alone.
    """
    from mindone.diffusers.training_utils import TrainStep
    from mindspore.amp import DynamicLossScaler

    class _Step(TrainStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.worker_mean = WorkerMean()

        def forward(self, *inputs):
            loss = self.model(*inputs)
            # TrainStep differentiates with has_aux=True, which PyNative only accepts with 2+ outputs.
            return self.scale_loss(loss), self.worker_mean(ops.stop_gradient(loss))

    params = loss_net.trainable_params()
    lr = learning_rates(train)
    optimizer = nn.AdamWeightDecay(params, learning_rate=ms.Tensor(lr), weight_decay=train.weight_decay)
    loss_scale = resolve_loss_scale(train.loss_scale, precision)
    # "static" is a dynamic scaler that never changes its scale (factor 1): MindONE's GradScaler skips the optimizer
    # step on overflowing gradients only for a DynamicLossScaler; with a StaticLossScaler it applies inf/nan.
    scaler = {"none": None, "static": DynamicLossScaler(train.initial_loss_scale, 1, 1),
              "dynamic": DynamicLossScaler(train.initial_loss_scale, 2, 1000)}[loss_scale]
    step = _Step(loss_net, optimizer, loss_scaler=scaler, max_grad_norm=train.grad_clip or None,
                 gradient_accumulation_steps=train.grad_accum_steps,
                 gradient_accumulation_kwargs={"sync_with_dataloader": False})
    step.set_train(True)
    return step, optimizer


class WorkerMean(nn.Cell):
    """Mean of a tensor over the data-parallel workers (identity when there is one): for logged losses."""

    def __init__(self):
        super().__init__()
        self.world = 1
        if ms.get_auto_parallel_context("parallel_mode") == ms.ParallelMode.DATA_PARALLEL:
            from mindspore.communication import get_group_size

            self.world = get_group_size()
        self.all_reduce = ops.AllReduce() if self.world > 1 else None

    def construct(self, x):
        if self.world > 1:
            return self.all_reduce(x) / self.world
        return x


class WorkerMeanLoss(nn.Cell):
    """``loss_net``'s loss averaged over the data-parallel workers (the held-out loss of the global batch)."""

    def __init__(self, loss_net: nn.Cell):
        super().__init__()
        self.loss_net, self.worker_mean = loss_net, WorkerMean()

    def construct(self, *inputs):
        return self.worker_mean(self.loss_net(*inputs))


def learning_rates(train: TrainConfig) -> np.ndarray:
    """Per-optimizer-step learning rate: linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    steps = np.arange(train.max_steps, dtype=np.float64)
    warm = max(train.warmup_steps, 1)
    decay_len = max(train.max_steps - train.warmup_steps, 1)
    progress = np.clip((steps - train.warmup_steps) / decay_len, 0.0, 1.0)
    cosine = train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + np.cos(math.pi * progress))
    lr = np.where(steps < train.warmup_steps, (steps + 1) / warm, cosine) * train.lr
    return lr.astype(np.float32)
