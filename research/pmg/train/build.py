"""Wire a :class:`Trainer` from config: frozen models, soft-preference encoder, cached inputs, jitted step."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import mindspore as ms

from research.pmg.config import PMGConfig
from research.pmg.examples import Keywords, examples_from, tokenize_prompts
from research.pmg.integrity import files_fingerprint
from research.pmg.records.samples import PreparedData
from research.pmg.runtime import Runtime
from research.pmg.train import dataset as ds
from research.pmg.train.loop import Trainer

def build_trainer(cfg: PMGConfig, runtime: Runtime, prepared: PreparedData, keywords: Keywords, *,
                  rank: int = 0, world: int = 1) -> Trainer:
    """Build everything a training run needs; the expensive frozen encodings come from the cache."""
    from research.pmg.models import build_diffusion_parts, resolve_tokenizers
    from research.pmg.models.conditioning import encode_texts
    from research.pmg.models.soft_preference import build_encoder, prompt_len
    from research.pmg.models.tokenizers import load_llama_tokenizer
    from research.pmg.train.step import PMGDiffusionLoss, WorkerMeanLoss, build_train_step, learning_rates

    from research.pmg.runtime import seed_everything

    llm_cfg, soft_cfg = cfg.models.llm, cfg.models.soft_preference
    seed_everything(cfg.runtime.seed)  # random-init (tiny) models and the trainable init are the same every build
    tokenizers = resolve_tokenizers(cfg, runtime)
    sd = build_diffusion_parts(cfg, runtime, tokenizers)
    if cfg.train.recompute:
        recompute_unet_blocks(sd.unet)
    encoder = build_encoder(cfg, runtime, sd.cross_attention_dim, batch_size=cfg.train.batch_size,
                            recompute=cfg.train.recompute)

    llm_tokenizer = load_llama_tokenizer(tokenizers.llm)
    vae_factor = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    image_size = int(sd.unet.config.sample_size) * vae_factor

    def encode_images(paths: list[Path]) -> np.ndarray:
        out = []
        for start in range(0, len(paths), 8):
            pixels = np.stack([ds.load_image(p, image_size) for p in paths[start:start + 8]])
            moments = sd.vae.encode(ms.Tensor(pixels).astype(sd.vae.dtype))[0]
            out.append(moments.astype(ms.float32).asnumpy())
        return np.concatenate(out)

    diffusion = cfg.models.diffusion
    # length_buckets only choose how much padding to cut at run time: the cached arrays are the same without them
    soft_fields = {k: v for k, v in soft_cfg.__dict__.items() if k != "length_buckets"}
    fingerprint = {"llm": llm_cfg.__dict__, "soft": soft_fields,
                   "diffusion": files_fingerprint([Path(diffusion.path)]) if diffusion.path else
                   {"unet": diffusion.unet, "vae": diffusion.vae, "text_encoder": diffusion.text_encoder,
                    "seed": cfg.runtime.seed},
                   "tokenizer": files_fingerprint([Path(tokenizers.llm)]), "image_size": image_size}
    # The keyword contexts are encoded in generation's layout (one text-encoder window, or generate.max_chunks
    # windows with generate.long_prompts: chunk), so the soft preference learns beside what it will meet there.
    chunks = cfg.generate.text_chunks
    if chunks:  # only then: the one-window caches of earlier runs keep their key
        fingerprint["text_chunks"] = chunks
    arrays = ds.build_arrays(
        examples_from(prepared, keywords), runtime.cache_dir, fingerprint,
        tokenize=lambda prompts: tokenize_prompts(llm_tokenizer, prompts, prompt_len(cfg), llm_cfg.pad_token_id),
        encode_images=encode_images,
        encode_texts=lambda texts: encode_texts(sd.text_encoder, sd.tokenizer, texts,
                                                cfg.models.diffusion.tokenizer_max_length, chunks=chunks))
    scheduler = sd.scheduler
    alphas = scheduler.alphas_cumprod.asnumpy() if hasattr(scheduler.alphas_cumprod, "asnumpy") \
        else np.asarray(scheduler.alphas_cumprod)
    loss_net = PMGDiffusionLoss(encoder, sd.unet, alphas, scheduler.config.prediction_type, cfg.train)
    step_cell, _ = build_train_step(loss_net, cfg.train, runtime.precision)
    return Trainer(cfg=cfg, runtime=runtime, arrays=arrays, encoder=encoder, loss_net=loss_net, step_cell=step_cell,
                   scheduler_steps=int(scheduler.config.num_train_timesteps),
                   vae_scaling=float(sd.vae.config.scaling_factor), learning_rates=learning_rates(cfg.train),
                   rank=rank, world=world, eval_net=WorkerMeanLoss(loss_net))



def recompute_unet_blocks(unet) -> int:
    """Recompute each UNet down, mid and up block in the backward pass (MindSpore ``Cell.recompute``).

    The UNet is frozen but the loss's gradient flows through it to the conditioning context, so without this
    every block's activations stay alive until the backward pass. Returns the number of blocks marked.
    """
    blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    for block in blocks:
        block.recompute()
    return len(blocks)
