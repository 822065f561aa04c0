"""The denoising loop: all candidates of a sample through the UNet together, with classifier-free guidance.

A candidate is one (conditioning context, initial latents) pair. Candidates run in micro-batches of a fixed
size (the last one padded by repeating its final row), so a compiled graph is built once per size and
reused. The unconditional branch shares the UNet call: rows ``[uncond; cond]``, as in diffusers. The
scheduler (DDIM with eta 0, or DPM-Solver++ multistep) is deterministic, so a candidate's image depends only
on its context and its initial latents, never on the batch it ran in.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from research.pmg.models.diffusion import DiffusionParts


class GuidedDenoiser(nn.Cell):
    """One UNet call for ``b`` candidates with classifier-free guidance.

    latents ``(b, c, h, w)``, timestep ``(2b,)`` int32, cond and uncond ``(b, T, ctx_dim)``, guidance ``()``
    -> guided prediction (noise or v) ``(b, c, h, w)`` float32.
    """

    def __init__(self, unet: nn.Cell):
        super().__init__()
        self.unet = unet
        self.dtype = unet.dtype if hasattr(unet, "dtype") else ms.float32

    def construct(self, latents, timestep, cond, uncond, guidance):
        b = latents.shape[0]
        x = ops.concat((latents, latents), axis=0).astype(self.dtype)
        context = ops.concat((uncond, cond), axis=0).astype(self.dtype)
        out = self.unet(x, timestep, encoder_hidden_states=context)[0].astype(ms.float32)
        uncond_out, cond_out = out[:b], out[b:]
        return uncond_out + guidance * (cond_out - uncond_out)


class LatentDecoder(nn.Cell):
    """VAE decoding of final latents ``(b, c, h, w)`` into images ``(b, 3, H, W)`` float32 in [0, 1]."""

    def __init__(self, vae: nn.Cell):
        super().__init__()
        self.vae = vae
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.dtype = vae.dtype if hasattr(vae, "dtype") else ms.float32

    def construct(self, latents):
        images = self.vae.decode((latents / self.scaling + self.shift).astype(self.dtype))[0].astype(ms.float32)
        return ops.clamp(images / 2 + 0.5, 0.0, 1.0)


class GenerationPipeline:
    """Stable Diffusion sampling for many candidates at once.

    ``scheduler`` is a MindONE DDIM or DPM-Solver multistep scheduler (its config is copied per call, so its
    state never leaks between calls). ``micro_batch`` bounds the candidates per UNet call; ``size`` is the
    image side in pixels (0 = the UNet's native size).
    """

    def __init__(self, parts: DiffusionParts, scheduler, *, steps: int, guidance: float, micro_batch: int,
                 size: int = 0):
        self.parts = parts
        self.scheduler = scheduler
        self.steps, self.guidance, self.micro_batch = steps, guidance, micro_batch
        self.vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        # The UNet halves the latent side once per down block but the last.
        unet_factor = 2 ** (len(parts.unet.config.down_block_types) - 1)
        native = int(parts.unet.config.sample_size) * self.vae_factor
        self.size = size or native
        if self.size % (self.vae_factor * unet_factor):
            raise ValueError(f"image size {self.size} must be a multiple of {self.vae_factor * unet_factor} "
                             "(VAE factor x UNet down-sampling)")
        self.latent_shape = (int(parts.unet.config.in_channels), self.size // self.vae_factor,
                             self.size // self.vae_factor)
        self.denoiser = GuidedDenoiser(parts.unet)
        self.decoder = LatentDecoder(parts.vae)

    def initial_latents(self, seeds: list[tuple[int, ...]]) -> np.ndarray:
        """Standard-normal latents ``(n, c, h, w)`` float32, one NumPy generator per seed tuple.

        Each row depends on its own seed only, so a candidate starts from the same noise alone or in a batch.
        """
        return np.stack([np.random.default_rng(list(seed)).standard_normal(self.latent_shape).astype(np.float32)
                         for seed in seeds])

    def __call__(self, cond: np.ndarray, uncond: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """Images ``(n, size, size, 3)`` float32 in [0, 1] for contexts ``cond (n, T, ctx_dim)``, the shared
        unconditional context ``uncond (T, ctx_dim)`` and initial latents ``(n, c, h, w)``."""
        n = len(cond)
        if len(latents) != n or n == 0:
            raise ValueError(f"need one initial latent per context, got {len(latents)} for {n}")
        rows = min(self.micro_batch, n)
        uncond_rows = np.broadcast_to(np.asarray(uncond, np.float32), (rows,) + uncond.shape)
        out = []
        for start in range(0, n, rows):
            take = np.arange(start, min(start + rows, n))
            padded = np.concatenate([take, np.full(rows - len(take), take[-1])])  # static shape: repeat last row
            images = self._sample(cond[padded], uncond_rows, latents[padded])
            out.append(images[:len(take)])
        return np.concatenate(out)

    def _sample(self, cond: np.ndarray, uncond: np.ndarray, latents: np.ndarray) -> np.ndarray:
        rows = len(cond)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(self.steps)
        cond_t = ms.Tensor(np.ascontiguousarray(cond, np.float32))
        uncond_t = ms.Tensor(np.ascontiguousarray(uncond, np.float32))
        guidance = ms.Tensor(self.guidance, ms.float32)
        x = ms.Tensor(latents) * float(scheduler.init_noise_sigma)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t)
            timestep = ms.Tensor(np.full(2 * rows, int(t), np.int32))
            pred = self.denoiser(model_in, timestep, cond_t, uncond_t, guidance)
            x = scheduler.step(pred, t, x, return_dict=False)[0].astype(ms.float32)
        return self.decoder(x).asnumpy().transpose(0, 2, 3, 1)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] -> uint8, rounded (as diffusers' ``numpy_to_pil``)."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
