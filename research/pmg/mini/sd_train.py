"""``python -m research.pmg.mini.sd_train --config configs/mini/sd.yaml [--resume]``: train the mini Stable Diffusion.

A latent diffusion model as Stable Diffusion builds one, at sticker size: CLIP-mini's text tower (frozen, as SD
keeps its CLIP text encoder frozen) encodes the captions; a small ``AutoencoderKL`` is trained first (MSE
reconstruction + a small KL term) and its latent scale measured; then a ``UNet2DConditionModel`` learns to
predict the noise of the scaled latents with the captions' hidden states as cross-attention context (10 % of
captions dropped for classifier-free guidance). The result is exported as a diffusers folder (``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``; fp16 weights) that ``models.diffusion.path``
points at, then loaded back through the project's model factory, sampled with DDIM and judged by CLIP-mini
caption retrieval (``manifest.json`` records it all). Run folder: ``<output_dir>/{vae,unet}``.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from research.pmg.cli import ArgumentParser, run
from research.pmg.config import ClipConfig, ConfigError, DiffusionConfig, SchedulerConfig
from research.pmg.mini.config import MiniEvalConfig, MiniSDConfig, load_mini_config

DIFFUSERS_VERSION = "0.35.0"  # the diffusers release mindone.diffusers 0.5 mirrors


def text_encoder_from_clip(clip_model):
    """A ``CLIPTextModel`` holding CLIP-mini's text tower (SD's text encoder is CLIP's text tower)."""
    from mindone.transformers import CLIPTextModel

    text = CLIPTextModel(clip_model.config.text_config)
    source = dict(clip_model.parameters_and_names())
    for name, param in text.parameters_and_names():
        if name not in source or tuple(source[name].shape) != tuple(param.shape):
            raise ConfigError(f"CLIP-mini has no text-tower parameter {name} of shape {tuple(param.shape)}")
        param.set_data(source[name].data.copy())
    text.set_train(False)
    return text


def vae_loss_cell(vae, kl_weight: float):
    """``(images (b, 3, s, s) in [-1, 1], eps (b, c, h, w)) -> MSE reconstruction + kl_weight * KL``.

    Train it inside ``pad_free_downsampling()`` (graph mode on CPU hangs otherwise; see the README)."""
    from mindspore import nn, ops

    class VaeLoss(nn.Cell):
        def __init__(self, model):
            super().__init__()
            self.vae = model
            self.kl_weight = kl_weight

        def construct(self, images, eps):
            moments = self.vae.encode(images)[0]
            channels = moments.shape[1] // 2
            mean, logvar = moments[:, :channels], moments[:, channels:]
            latents = mean + ops.exp(0.5 * logvar) * eps
            recon = self.vae.decode(latents)[0]
            kl = 0.5 * (mean * mean + ops.exp(logvar) - 1.0 - logvar).sum((1, 2, 3)).mean()
            diff = recon - images
            return (diff * diff).mean() + self.kl_weight * kl

    return VaeLoss(vae)


@contextmanager
def pad_free_downsampling():
    """Train with the VAE encoder's ``Downsample2D`` padding done by concatenating zeros, not by ``pad``.

    The same function and the same weights (the export is a plain diffusers ``AutoencoderKL``): diffusers' VAE
    down-samples by padding (0, 1, 0, 1) then a stride-2 convolution, and on CPU in graph mode the backward of
    that constant pad made the train step spin forever in ``libmindspore_ops_cpu.so`` on the 18th call of every
    process (README, "the graph-mode step hang"). Applies to every ``Downsample2D`` compiled inside the block."""
    from mindone.diffusers.models.downsampling import Downsample2D
    from mindspore import ops

    original = Downsample2D.construct

    def construct(self, hidden_states):
        if self.norm is not None:
            hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.use_conv and self.padding == 0:  # (0, 1, 0, 1): one zero column on the right, one row below
            b, c, h, w = hidden_states.shape
            hidden_states = ops.concat((hidden_states, ops.zeros((b, c, h, 1), hidden_states.dtype)), 3)
            hidden_states = ops.concat((hidden_states, ops.zeros((b, c, 1, w + 1), hidden_states.dtype)), 2)
        return self.conv(hidden_states)

    Downsample2D.construct = construct
    try:
        yield
    finally:
        Downsample2D.construct = original


def unet_loss_cell(unet, alphas_cumprod: np.ndarray, prediction_type: str, snr_gamma: float = 0.0):
    """``(latents, context, noise, timesteps) -> MSE`` of the UNet's noise (or v) prediction.

    With ``snr_gamma`` > 0 each sample's squared error is weighted by min-SNR-gamma (Hang et al., 2023):
    ``min(SNR_t, gamma) / SNR_t`` for noise prediction, ``min(SNR_t, gamma) / (SNR_t + 1)`` for v, where
    ``SNR_t = alpha_t / (1 - alpha_t)``. It takes weight off the nearly clean timesteps, whose fine detail the loss
    otherwise spends most of its gradient on, so the steps decide more of the global shape and colour a caption
    sets. 0 = the plain MSE.
    """
    import mindspore as ms
    from mindspore import nn, ops

    alphas = np.asarray(alphas_cumprod, np.float64)
    snr = alphas / (1.0 - alphas)
    if snr_gamma > 0:
        weights = np.minimum(snr, snr_gamma) / (snr + 1.0 if prediction_type == "v_prediction" else snr)
    else:
        weights = np.ones_like(snr)

    class UnetLoss(nn.Cell):
        def __init__(self, model):
            super().__init__()
            self.unet = model
            self.alphas = ms.Tensor(alphas.astype(np.float32))
            self.weights = ms.Tensor(weights.astype(np.float32))
            self.v_prediction = prediction_type == "v_prediction"

        def construct(self, latents, context, noise, timesteps):
            alpha = self.alphas[timesteps].reshape(-1, 1, 1, 1)
            noisy = ops.sqrt(alpha) * latents + ops.sqrt(1.0 - alpha) * noise
            pred = self.unet(noisy, timesteps, encoder_hidden_states=context)[0]
            target = ops.sqrt(alpha) * noise - ops.sqrt(1.0 - alpha) * latents if self.v_prediction else noise
            return (((pred - target) ** 2).mean(axis=(1, 2, 3)) * self.weights[timesteps]).mean()

    return UnetLoss(unet)


def vae_moments(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """VAE posterior moments ``(n, 2c, h, w)`` float32 of signed images ``(n, 3, s, s)``."""
    import mindspore as ms

    return np.concatenate([vae.encode(ms.Tensor(images[i:i + batch]))[0].asnumpy()
                           for i in range(0, len(images), batch)])


def vae_decode(vae, latents: np.ndarray, batch: int = 64) -> np.ndarray:
    import mindspore as ms

    return np.concatenate([vae.decode(ms.Tensor(latents[i:i + batch]))[0].asnumpy()
                           for i in range(0, len(latents), batch)])


def vae_held_out(n: int, every: int) -> np.ndarray:
    """``(n,)`` bool: the stickers kept out of the VAE's training (every ``every``-th; none for 0)."""
    index = np.arange(n)
    return index % every == 0 if every else np.zeros(n, bool)


def psnr_db(recon: np.ndarray, pixels: np.ndarray) -> float:
    """PSNR of reconstructions of ``pixels`` (both (n, 3, s, s) in [-1, 1]; reconstructions clipped), in dB on
    [0, 1] images."""
    mse = float(np.mean((np.clip(recon, -1, 1) - pixels) ** 2) / 4.0)
    return round(float(10 * np.log10(1.0 / max(mse, 1e-12))), 2)


def variant_texts(data, variant: str) -> list[str]:
    """One ``variant`` text (research.pmg.mini.sd_texts) per sticker of ``data``, in row order."""
    from research.pmg.records.samples import Item
    from research.pmg.mini.sd_texts import VARIANTS, sticker_texts

    k = VARIANTS.index(variant)
    return [sticker_texts(Item(id=i, title=c, category=t))[k] for i, c, t in zip(data.ids, data.captions, data.themes)]


def check_shapes(cfg: MiniSDConfig, text_hidden: int | None) -> int:
    """The VAE's down-sampling factor, after checking the UNet fits the latents (and the text encoder's width)."""
    factor = 2 ** (len(cfg.vae.get("block_out_channels", [64])) - 1)
    where = f"{cfg.source}: "
    if cfg.data.image_size % factor:
        raise ConfigError(f"{where}data.image_size: {cfg.data.image_size} is not a multiple of the VAE factor {factor}")
    if cfg.unet.get("sample_size") != cfg.data.image_size // factor:
        raise ConfigError(f"{where}unet.sample_size must be data.image_size / VAE factor = "
                          f"{cfg.data.image_size // factor}")
    if text_hidden is not None and cfg.unet.get("cross_attention_dim") != text_hidden:
        raise ConfigError(f"{where}unet.cross_attention_dim must be CLIP-mini's text hidden size {text_hidden}")
    return factor


def to_fp16(folder: Path) -> None:
    """Store every ``*.safetensors`` below ``folder`` in fp16 (loaders cast back to the runtime's precision)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), "np") as handle:
            metadata = handle.metadata()
        tensors = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata=metadata)


def export_sd(folder: Path, *, unet, vae, text_encoder, tokenizer_dir: Path, scheduler: SchedulerConfig) -> None:
    """Write a diffusers-format folder (fp16 weights), replacing ``folder`` atomically."""
    from research.pmg.mini.clip_train import TOKENIZER_FILES, _replace_dir

    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unet.save_pretrained(str(tmp / "unet"))
    vae.save_pretrained(str(tmp / "vae"))
    text_encoder.save_pretrained(str(tmp / "text_encoder"))
    (tmp / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, tmp / "tokenizer" / name)
    (tmp / "scheduler").mkdir()
    # Stable Diffusion's scheduler settings (no x0 clipping; DDIM offset by one, final alpha from the schedule).
    sched = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
             "num_train_timesteps": scheduler.num_train_timesteps, "beta_start": scheduler.beta_start,
             "beta_end": scheduler.beta_end, "beta_schedule": scheduler.beta_schedule,
             "prediction_type": scheduler.prediction_type, "clip_sample": False, "set_alpha_to_one": False,
             "steps_offset": 1}
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    to_fp16(tmp)
    _replace_dir(tmp, folder)


def evaluate_sd(sd_folder: str | Path, clip_folder: str | Path, ecfg: MiniEvalConfig, runtime, data,
                tokenizer_max_length: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Generate one image per evaluation caption with the exported SD and judge it with CLIP-mini.

    Both models are loaded from their folders through the project's factory, as the PMG stages load them.
    Returns (metrics, generated uint8 images ``(n, s, s, 3)``, their catalogue rows).
    """
    from research.pmg.generate.pipeline import GenerationPipeline, to_uint8
    from research.pmg.generate.scorer import ClipScorer, clip_image_processor
    from research.pmg.mini.images import eval_subset
    from research.pmg.mini.retrieval import retrieval_metrics
    from research.pmg.models.clip import build_clip
    from research.pmg.models.conditioning import encode_texts
    from research.pmg.models.diffusion import build_diffusion

    sd = build_diffusion(DiffusionConfig(path=str(sd_folder), tokenizer_max_length=tokenizer_max_length,
                                         scheduler=SchedulerConfig(name="ddim")), runtime, source="mini sd")
    clip = build_clip(ClipConfig(path=str(clip_folder)), runtime, source="mini clip")
    rows = eval_subset(data, ecfg.captions_per_theme, ecfg.seed)
    captions = [data.captions[i] for i in rows]
    cond = encode_texts(sd.text_encoder, sd.tokenizer, captions, tokenizer_max_length)
    uncond = encode_texts(sd.text_encoder, sd.tokenizer, [""], tokenizer_max_length)[0]
    pipe = GenerationPipeline(sd, sd.scheduler, steps=ecfg.steps, guidance=ecfg.guidance, micro_batch=ecfg.micro_batch)
    latents = pipe.initial_latents([(ecfg.seed, int(i)) for i in rows])
    images = to_uint8(pipe(cond, uncond, latents))

    scorer = ClipScorer(clip, clip_image_processor(clip, clip_folder))
    text_all = scorer.text_features(list(data.captions))
    generated = scorer.image_features(images)
    real = scorer.image_features(data.images[rows])
    subset_themes = [data.themes[i] for i in rows]
    local = np.arange(len(rows))
    metrics = {
        "protocol": {"captions_per_theme": ecfg.captions_per_theme, "images": len(rows), "ddim_steps": ecfg.steps,
                     "guidance": ecfg.guidance, "seed": ecfg.seed},
        "generated_vs_eval_captions": retrieval_metrics(generated, text_all[rows], local, subset_themes),
        "generated_vs_all_captions": retrieval_metrics(generated, text_all, rows, data.themes),
        "real_vs_eval_captions": retrieval_metrics(real, text_all[rows], local, subset_themes),
        "real_vs_all_captions": retrieval_metrics(real, text_all, rows, data.themes),
    }
    return metrics, images, rows


def contact_sheet(generated: np.ndarray, real: np.ndarray, columns: int, path: Path) -> None:
    """Pairs (generated above, real below) in a grid, as a PNG."""
    from PIL import Image

    n, size = len(generated), generated.shape[1]
    rows = -(-n // columns)
    sheet = np.full((rows * 2 * size, columns * size, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[2 * r * size:(2 * r + 1) * size, c * size:(c + 1) * size] = generated[i]
        sheet[(2 * r + 1) * size:(2 * r + 2) * size, c * size:(c + 1) * size] = real[i]
    Image.fromarray(sheet).save(path)


def train_sd(cfg: MiniSDConfig, runtime, *, resume: bool, stop_after: dict | None = None, export: bool = True,
             progress: bool = True, command: str = "") -> dict:
    """Train the VAE then the UNet (``stop_after={'vae': n}`` or ``{'unet': n}`` interrupts, for tests)."""
    import mindspore as ms
    from mindone.diffusers import AutoencoderKL, UNet2DConditionModel
    from mindone.transformers import CLIPModel

    from research.pmg.mini.clip_train import caption_ids
    from research.pmg.mini.images import data_info, load_sticker_images, signed
    from research.pmg.mini.manifest import read_manifest, write_manifest
    from research.pmg.mini.trainer import build_step, run_metrics, train
    from research.pmg.models.diffusion import build_scheduler, check_arch
    from research.pmg.models.tokenizers import load_clip_tokenizer
    from research.pmg.runtime import seed_everything
    from research.pmg.train.dataset import batch_indices, sample_latents, step_noise

    t0 = time.time()
    stop_after = stop_after or {}
    out, seed = runtime.output_dir, cfg.runtime.seed
    clip_dir = Path(cfg.clip)
    check_arch(AutoencoderKL, cfg.vae, f"{cfg.source}: vae")
    check_arch(UNet2DConditionModel, cfg.unet, f"{cfg.source}: unet")
    data = load_sticker_images(cfg.data.image_size, cfg.data.themes)
    pixels = signed(data.images)

    factor = check_shapes(cfg, None)

    # 1. The VAE (needs no text: it trains before CLIP-mini is read).
    seed_everything(seed)
    vae = AutoencoderKL.from_config(dict(cfg.vae, sample_size=cfg.data.image_size))
    latent_channels = int(vae.config.latent_channels)
    lat = cfg.data.image_size // factor
    vt = cfg.vae_train
    vae_step = build_step(vae_loss_cell(vae, vt.kl_weight), vt)

    held_out = vae_held_out(len(data), vt.holdout_every)
    vae_rows = np.flatnonzero(~held_out)

    def vae_batch(step: int):
        rows = vae_rows[batch_indices(len(vae_rows), step, 0, 1, vt.batch_size, seed)]
        eps = np.random.default_rng([seed, step, 11]).standard_normal((vt.batch_size, latent_channels, lat, lat))
        return ms.Tensor(pixels[rows]), ms.Tensor(eps.astype(np.float32))

    with pad_free_downsampling():
        vae_run = train("vae", vae_step, vae_batch, vt, out / "vae", resume=resume, stop_after=stop_after.get("vae"),
                        progress=progress)
    if vae_run.steps_done < vt.max_steps:
        return {"vae_steps": vae_run.steps_done}
    vae.set_train(False)
    moments = vae_moments(vae, pixels)
    means = moments[:, :latent_channels]
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    recon = vae_decode(vae, means)
    vae_metrics = {**run_metrics(vae_run), "scaling_factor": scaling, "recon_psnr_db": psnr_db(recon, pixels)}
    if held_out.any():
        vae_metrics.update(held_out_stickers=int(held_out.sum()),
                           recon_psnr_held_out_db=psnr_db(recon[held_out], pixels[held_out]))

    # 2. The UNet on the scaled latents. The frozen text encoder's caption hidden states are computed once
    # (row n is the empty caption, for classifier-free guidance).
    if not (clip_dir / "config.json").is_file():
        raise ConfigError(f"{cfg.source}: clip: {clip_dir} is not a CLIP-mini folder; run scripts/run_mini_clip.sh")
    clip_model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True, mindspore_dtype=ms.float32)
    text_encoder = text_encoder_from_clip(clip_model)
    tokenizer = load_clip_tokenizer(clip_dir, cfg.tokenizer_max_length)
    # Row v * n + i: text variant v (unet_train.texts) of sticker i; the last row is the empty text.
    texts = [t for variant in cfg.unet_train.texts for t in variant_texts(data, variant)] + [""]
    ids = caption_ids(tokenizer, texts)
    contexts = np.concatenate([text_encoder(ms.Tensor(ids[i:i + 64]))[0].asnumpy() for i in range(0, len(ids), 64)])
    empty = len(texts) - 1

    check_shapes(cfg, int(clip_model.config.text_config.hidden_size))
    seed_everything(seed + 1)
    unet = UNet2DConditionModel.from_config(dict(cfg.unet))
    scheduler = build_scheduler(cfg.scheduler)
    alphas = scheduler.alphas_cumprod
    alphas = alphas.asnumpy() if hasattr(alphas, "asnumpy") else np.asarray(alphas)
    ut = cfg.unet_train
    unet_step = build_step(unet_loss_cell(unet, alphas, cfg.scheduler.prediction_type, ut.snr_gamma), ut)
    shape = (ut.batch_size, latent_channels, lat, lat)

    def unet_batch(step: int):
        rows = batch_indices(len(data), step, 0, 1, ut.batch_size, seed)
        noise, timesteps, eps = step_noise(shape, cfg.scheduler.num_train_timesteps, step, 0, seed)
        latents = sample_latents(moments[rows], eps, scaling)
        rng = np.random.default_rng([seed, step, 13])
        drop = rng.random(ut.batch_size) < ut.cond_dropout
        variant = rng.integers(0, len(ut.texts), ut.batch_size)
        context = contexts[np.where(drop, empty, variant * len(data) + rows)]
        return ms.Tensor(latents), ms.Tensor(context), ms.Tensor(noise), ms.Tensor(timesteps)

    unet_run = train("unet", unet_step, unet_batch, ut, out / "unet", resume=resume, stop_after=stop_after.get("unet"),
                     progress=progress)
    if unet_run.steps_done < ut.max_steps:
        return {"vae": vae_metrics, "unet_steps": unet_run.steps_done}
    unet.set_train(False)
    metrics = {"vae": vae_metrics,
               "unet": run_metrics(unet_run)}
    if not export:
        return metrics

    folder = Path(cfg.export)
    export_sd(folder, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer_dir=clip_dir, scheduler=cfg.scheduler)
    evaluation, images, rows = evaluate_sd(folder, clip_dir, cfg.eval, runtime, data, cfg.tokenizer_max_length)
    metrics["eval"] = evaluation
    contact_sheet(images, data.images[rows], cfg.eval.captions_per_theme, folder / "samples.png")
    metrics["wall_seconds"] = round(time.time() - t0, 1)
    metrics["process_cpu_seconds"] = round(time.process_time(), 1)
    clip_manifest = read_manifest(clip_dir) if (clip_dir / "manifest.json").is_file() else {}
    write_manifest(folder, kind="stable-diffusion", cfg=cfg, data=data_info(data), command=command, metrics=metrics,
                   extra={"clip": {"folder": str(clip_dir), "weights_sha256": clip_manifest.get("files", {})}})
    return metrics


def reevaluate(cfg: MiniSDConfig, runtime, command: str) -> dict:
    """Evaluate the exported SD again with ``cfg.eval`` (e.g. another guidance scale); update its manifest."""
    from research.pmg.mini.config import config_dict
    from research.pmg.mini.images import load_sticker_images
    from research.pmg.mini.manifest import read_manifest, write_manifest

    folder = Path(cfg.export)
    manifest = read_manifest(folder)
    data = load_sticker_images(cfg.data.image_size, cfg.data.themes)
    if manifest["data"]["sha256"] != data.data_hash:
        raise ConfigError(f"{folder}: trained on other data (sha256 {manifest['data']['sha256'][:12]}...) than "
                          f"{cfg.source} selects ({data.data_hash[:12]}...)")
    evaluation, images, rows = evaluate_sd(folder, cfg.clip, cfg.eval, runtime, data, cfg.tokenizer_max_length)
    contact_sheet(images, data.images[rows], cfg.eval.captions_per_theme, folder / "samples.png")
    metrics = dict(manifest["metrics"], eval=evaluation)
    saved = {k: manifest[k] for k in ("clip",) if k in manifest}
    trained = {"config_file": manifest["config_file"],
               "config": dict(manifest["config"], eval=config_dict(cfg)["eval"])}
    write_manifest(folder, kind=manifest["kind"], cfg=trained, data=manifest["data"], command=manifest["command"],
                   metrics=metrics, extra=dict(saved, evaluation_command=command))
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m research.pmg.mini.sd_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mini/sd.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set unet_train.max_steps=100 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoints, if any")
    parser.add_argument("--no-export", action="store_true", help="train only; leave the export folder")
    parser.add_argument("--eval-only", action="store_true",
                        help="no training: evaluate the exported folder with the config's eval section again")
    args = parser.parse_args(argv)
    cfg = load_mini_config(MiniSDConfig, args.config, args.overrides)

    from research.pmg.mini.clip_train import _dump
    from research.pmg.mini.config import config_dict
    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    _dump(config_dict(cfg), runtime.output_dir / "config.yaml")
    command = " ".join(["python -m research.pmg.mini.sd_train"] + (argv if argv is not None else sys.argv[1:]))
    if args.eval_only:
        metrics = reevaluate(cfg, runtime, command)
    else:
        metrics = train_sd(cfg, runtime, resume=args.resume, export=not args.no_export, command=command)
    vae, unet = metrics["vae"], metrics["unet"]
    held = (f" ({vae['recon_psnr_held_out_db']} dB on {vae['held_out_stickers']} held-out stickers)"
            if "recon_psnr_held_out_db" in vae else "")
    print(f"VAE: {vae['steps']} steps, loss {vae['loss_first']:.4f} -> {vae['loss_last']:.4f}, reconstruction "
          f"PSNR {vae['recon_psnr_db']} dB{held}; UNet: {unet['steps']} steps, loss {unet['loss_first']:.4f} -> "
          f"{unet['loss_last']:.4f}")
    if "eval" in metrics:
        ev = metrics["eval"]
        for key in ("generated_vs_eval_captions", "real_vs_eval_captions", "generated_vs_all_captions"):
            m = ev[key]
            print(f"{key}: top-1 {m['top1']:.3f} (chance {m['chance_top1']:.3f}), top-5 {m['top5']:.3f}, "
                  f"theme {m['theme']:.3f} (chance {m['chance_theme']:.3f})")
        print(f"exported: {cfg.export}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
