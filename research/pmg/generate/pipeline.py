"""The denoising loop: candidates through the UNet in fixed-size calls, with classifier-free guidance.

A candidate is one (conditioning context, initial latents) pair. Candidates run in micro-batches of a fixed
number of rows (the last one padded by repeating its final row), so a compiled graph is built once per size
and reused; :meth:`GenerationPipeline.stream` lets the candidates of consecutive samples share those calls.
The unconditional branch shares the UNet call: rows ``[uncond; cond]``, as in diffusers. The scheduler (DDIM
with eta 0, or DPM-Solver++ multistep) is deterministic and elementwise over the batch, so a candidate's image
depends only on its context and its initial latents, never on the batch it ran in (up to float noise between
batch sizes and places in a call; :func:`call_groups` keeps them fixed where that matters).
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from research.pmg.models.diffusion import DiffusionParts


def call_groups(sizes: list[int], rows: int) -> list[list[int]]:
    """Consecutive blocks of ``sizes`` candidates, grouped so that each group fills whole UNet calls of ``rows``
    when :meth:`GenerationPipeline.stream` runs all the blocks (only the last group may end in a padded call).

    Streaming any selection of whole groups, in order, therefore runs every block in exactly the calls, with
    the same companions at the same places, as streaming all of them: a resumed run denoises its samples as
    the uninterrupted run did, bit for bit (a row's floats can depend on its place in a call).
    """
    groups, current, filled = [], [], 0
    for i, size in enumerate(sizes):
        current.append(i)
        filled = (filled + size) % rows
        if not filled:
            groups.append(current)
            current = []
    return groups + [current] if current else groups


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

    def rows_for(self, candidates: int) -> int:
        """Candidates per UNet call for ``candidates`` in all: ``micro_batch``, or fewer if there are fewer."""
        return max(1, min(self.micro_batch, candidates))

    def __call__(self, cond: np.ndarray, uncond: np.ndarray, latents: np.ndarray,
                 rows: int | None = None) -> np.ndarray:
        """Images ``(n, size, size, 3)`` float32 in [0, 1] for contexts ``cond (n, T, ctx_dim)``, the shared
        unconditional context ``uncond (T, ctx_dim)`` and initial latents ``(n, c, h, w)``, in UNet calls of
        ``rows`` candidates (default :meth:`rows_for` ``(n)``)."""
        return next(self.stream([(cond, latents)], uncond, rows or self.rows_for(len(cond))))

    def stream(self, blocks: Iterable[tuple[np.ndarray, np.ndarray]], uncond: np.ndarray,
               rows: int) -> Iterator[np.ndarray]:
        """Images of each block ``(cond (n, T, ctx_dim), latents (n, c, h, w))``, yielded block by block in order.

        The candidates of consecutive blocks (the samples of a run) are laid end to end and denoised in UNet
        calls of exactly ``rows`` candidates: a call may hold several blocks and a block may span calls; the
        last call is padded by repeating its final candidate. Blocks are pulled lazily, only as many as fill
        the next call, and a block's images are yielded as soon as its last candidate is done.
        """
        uncond_rows = np.broadcast_to(np.asarray(uncond, np.float32), (rows,) + uncond.shape)
        blocks = iter(blocks)
        cond_queue, latent_queue = [], []  # candidates not yet denoised
        sizes = deque()  # candidate counts of the blocks not yet yielded
        finished = []  # images of the candidates denoised but not yet yielded
        queued, exhausted = 0, False
        while True:
            while not exhausted and queued < rows:
                try:
                    cond, latents = next(blocks)
                except StopIteration:
                    exhausted = True
                    break
                if len(latents) != len(cond) or len(cond) == 0:
                    raise ValueError(f"need one initial latent per context, got {len(latents)} for {len(cond)}")
                cond_queue.append(np.asarray(cond, np.float32))
                latent_queue.append(np.asarray(latents, np.float32))
                sizes.append(len(cond))
                queued += len(cond)
            if not queued:
                return
            cond_all, latent_all = np.concatenate(cond_queue), np.concatenate(latent_queue)
            take = min(rows, queued)
            padded = np.concatenate([np.arange(take), np.full(rows - take, take - 1)])  # static shape
            finished.append(self._sample(cond_all[padded], uncond_rows, latent_all[padded])[:take])
            cond_queue, latent_queue, queued = [cond_all[take:]], [latent_all[take:]], queued - take
            done = np.concatenate(finished)
            while sizes and len(done) >= sizes[0]:
                size = sizes.popleft()
                block, done = done[:size], done[size:]
                yield block
            finished = [done]

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
