"""PMG-mini, image side: the sticker image set, the CLIP-mini and mini-SD trainers, and the committed weights.

The acceptance test loads the committed weights (research/pmg/assets/mini/{clip,sd}) through the project's model
factory, samples one image per evaluation caption with a fixed seed and checks that CLIP-mini retrieves the right
caption far more often than chance.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from research.pmg.config import ConfigError
from research.pmg.mini.config import MiniClipConfig, MiniSDConfig, load_mini_config

ROOT = Path(__file__).resolve().parents[1]
CLIP_YAML, SD_YAML = ROOT / "configs/mini/clip.yaml", ROOT / "configs/mini/sd.yaml"
ASSETS = ROOT / "research/pmg/assets/mini"

# Acceptance targets of the committed mini SD (research/pmg/mini/README.md, "Measured"): one DDIM sample per
# evaluation caption, judged by CLIP-mini over the 49 evaluation captions (chance 1/49 = 0.020 top-1, 1/7 = 0.143
# theme). The committed export measures top-1 0.184 (9 of 49) and theme 0.469 (23 of 49): both targets are met
# (the evaluation is deterministic on CPU: the same numbers every run).
TARGET_GENERATED_TOP1 = 0.15
TARGET_GENERATED_THEME = 0.45
# CLIP-mini on the 347 real stickers against all 347 captions, as measured with the committed weights (README:
# top-1 0.758, top-5 0.960, theme 0.974; chance 0.003 / 0.014 / 0.20): 263, 333 and 338 of 347.
MEASURED_REAL_RETRIEVAL = {"top1": 263 / 347, "top5": 333 / 347, "theme": 338 / 347}

TINY_CLIP = ["data.themes=[cats, hearts]", "model.projection_dim=32",
             "model.text_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2,"
             " max_position_embeddings: 32}",
             "model.vision_config={image_size: 32, patch_size: 8, hidden_size: 32, intermediate_size: 64,"
             " num_hidden_layers: 1, num_attention_heads: 2}",
             "train.batch_size=8", "train.max_steps=2", "train.warmup_steps=1", "train.save_every=1",
             "train.log_every=1", "train.keep_last=3"]
TINY_SD = ["data.themes=[cats, hearts]", "tokenizer_max_length=32",
           "vae={in_channels: 3, out_channels: 3, down_block_types: [DownEncoderBlock2D, DownEncoderBlock2D],"
           " up_block_types: [UpDecoderBlock2D, UpDecoderBlock2D], block_out_channels: [8, 16], latent_channels: 4,"
           " layers_per_block: 1, norm_num_groups: 8, mid_block_add_attention: false}",
           "unet={sample_size: 16, in_channels: 4, out_channels: 4, layers_per_block: 1, block_out_channels: [16, 32],"
           " down_block_types: [CrossAttnDownBlock2D, DownBlock2D], up_block_types: [UpBlock2D, CrossAttnUpBlock2D],"
           " cross_attention_dim: 32, attention_head_dim: 4, norm_num_groups: 8}",
           "vae_train.batch_size=4", "vae_train.max_steps=2", "vae_train.warmup_steps=1", "vae_train.save_every=1",
           "vae_train.log_every=1", "vae_train.keep_last=3",
           "unet_train.batch_size=4", "unet_train.max_steps=2", "unet_train.warmup_steps=1", "unet_train.save_every=1",
           "unet_train.log_every=1", "unet_train.keep_last=3",
           "eval.captions_per_theme=2", "eval.steps=2", "eval.micro_batch=4"]


# --------------------------------------------------------------------------------------------------------------------
# Configs and data
# --------------------------------------------------------------------------------------------------------------------
def test_mini_configs_load_and_reject_bad_fields(tmp_path):
    clip = load_mini_config(MiniClipConfig, CLIP_YAML)
    sd = load_mini_config(MiniSDConfig, SD_YAML)
    assert clip.data.image_size == sd.data.image_size == 32
    assert sd.unet["cross_attention_dim"] == clip.model.text_config["hidden_size"]
    with pytest.raises(ConfigError, match="unknown field 'train.lrr'"):
        load_mini_config(MiniClipConfig, CLIP_YAML, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="text_config.vocab_size"):
        load_mini_config(MiniClipConfig, CLIP_YAML, ["model.text_config.vocab_size=5"])
    with pytest.raises(ConfigError, match="themes"):
        load_mini_config(MiniSDConfig, SD_YAML, ["data.themes=[robots]"])
    with pytest.raises(ConfigError, match="in_channels"):
        load_mini_config(MiniSDConfig, SD_YAML, ["unet.in_channels=3"])
    with pytest.raises(ConfigError, match="cond_dropout"):
        load_mini_config(MiniSDConfig, SD_YAML, ["unet_train.cond_dropout=1.5"])
    with pytest.raises(ConfigError, match="holdout_every: must be 0 or >= 2"):
        load_mini_config(MiniSDConfig, SD_YAML, ["vae_train.holdout_every=1"])
    with pytest.raises(ConfigError, match="snr_gamma: must be >= 0"):
        load_mini_config(MiniSDConfig, SD_YAML, ["unet_train.snr_gamma=-1"])


def test_sticker_images_are_the_catalogue_read_like_evaluation():
    from transformers import CLIPImageProcessor

    from research.pmg.mini.images import augment, clip_pixels, eval_subset, load_sticker_images

    data = load_sticker_images(32, ["cats", "hearts"])
    assert data.images.shape == (len(data), 32, 32, 3) and data.images.dtype == np.uint8
    assert set(data.themes) == {"cats", "hearts"} and len(set(data.captions)) == len(data)
    assert np.median(data.images[:, 0, 0]) == 255  # transparent corners come out white
    assert load_sticker_images(32, ["cats", "hearts"]).data_hash == data.data_hash
    assert load_sticker_images(32, ["cats"]).data_hash != data.data_hash
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = processor(images=list(data.images[:4]), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(clip_pixels(data.images[:4]), expected, atol=1e-5)
    a = augment(data.images, np.random.default_rng(3))
    assert a.shape == data.images.shape and a.dtype == np.uint8 and not np.array_equal(a, data.images)
    np.testing.assert_array_equal(a, augment(data.images, np.random.default_rng(3)))
    rows = eval_subset(data, 2, 0)
    assert sorted(data.themes[i] for i in rows) == ["cats", "cats", "hearts", "hearts"]


def test_retrieval_metrics():
    from research.pmg.mini.retrieval import retrieval_metrics

    text = np.eye(4)
    image = np.eye(4)[[0, 1, 3, 2]] + 0.1
    m = retrieval_metrics(image, text, np.arange(4), ["a", "a", "b", "b"])
    assert m["top1"] == 0.5 and m["theme"] == 1.0 and m["chance_top1"] == 0.25 and m["chance_theme"] == 0.5


# --------------------------------------------------------------------------------------------------------------------
# One step lowers the loss (PyNative: tiny models, no compilation)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def pynative(runtime):
    from research.pmg.runtime import set_execution_mode

    set_execution_mode("pynative")
    yield
    set_execution_mode("graph")


def _lowers(loss_net, optim, inputs):
    from research.pmg.mini.trainer import build_step

    before = float(loss_net(*inputs).asnumpy())
    step = build_step(loss_net, optim)
    step(*inputs)
    after = float(loss_net(*inputs).asnumpy())
    assert after < before, (before, after)


def test_one_step_lowers_each_trainers_loss(pynative, runtime, tmp_path):
    import mindspore as ms
    from mindone.diffusers import AutoencoderKL, UNet2DConditionModel

    from research.pmg.mini.clip_train import build_caption_tokenizer, build_clip_model, caption_ids, \
        contrastive_loss_cell
    from research.pmg.mini.images import clip_pixels, load_sticker_images, signed
    from research.pmg.mini.sd_train import unet_loss_cell, vae_loss_cell
    from research.pmg.models.diffusion import build_scheduler
    from research.pmg.models.tokenizers import load_clip_tokenizer
    from research.pmg.runtime import seed_everything

    cfg = load_mini_config(MiniClipConfig, CLIP_YAML, TINY_CLIP + ["train.lr=1e-4", "train.warmup_steps=0"])
    data = load_sticker_images(32, ["cats", "hearts"])
    tok = load_clip_tokenizer(build_caption_tokenizer(data.captions, cfg.tokenizer, tmp_path / "tok", 32), 32)
    rows = np.arange(8)
    # Random init, seeded here: unseeded, the weights came from whatever the worker ran before, and with some of
    # them one step raised the contrastive loss (2.354 -> 2.425 in a clean-clone run), so the verdict hung on test order
    seed_everything(0)
    clip = build_clip_model(cfg, tok)
    _lowers(contrastive_loss_cell(clip), cfg.train,
            (ms.Tensor(clip_pixels(data.images[rows])), ms.Tensor(caption_ids(tok, [data.captions[i] for i in rows]))))

    sd = load_mini_config(MiniSDConfig, SD_YAML, TINY_SD + ["vae_train.warmup_steps=0", "unet_train.warmup_steps=0",
                                                      "vae_train.lr=1e-4", "unet_train.lr=1e-4"])
    seed_everything(0)
    vae = AutoencoderKL.from_config(dict(sd.vae, sample_size=32))
    rng = np.random.default_rng(0)
    eps = ms.Tensor(rng.standard_normal((8, 4, 16, 16)).astype(np.float32))
    _lowers(vae_loss_cell(vae, 1e-6), sd.vae_train, (ms.Tensor(signed(data.images[rows])), eps))

    seed_everything(0)
    unet = UNet2DConditionModel.from_config(dict(sd.unet))
    scheduler = build_scheduler(sd.scheduler)
    alphas = scheduler.alphas_cumprod.asnumpy()
    inputs = (ms.Tensor(rng.standard_normal((4, 4, 16, 16)).astype(np.float32)),
              ms.Tensor(rng.standard_normal((4, 32, 32)).astype(np.float32)),
              ms.Tensor(rng.standard_normal((4, 4, 16, 16)).astype(np.float32)),
              ms.Tensor(np.array([10, 300, 600, 900], np.int32)))
    _lowers(unet_loss_cell(unet, alphas, "epsilon"), sd.unet_train, inputs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_unet_loss_weights_timesteps_by_min_snr_as_diffusers(pynative, prediction_type, gamma):
    """The mini SD's UNet loss against the weighting of diffusers' text-to-image script: per-sample MSE times
    min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), SNR from diffusers' own ``compute_snr``, in PyTorch."""
    import mindspore as ms
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
    from mindspore import nn

    from research.pmg.mini.sd_train import unet_loss_cell

    class StandIn(nn.Cell):  # a fixed, non-trivial prediction: the loss's weighting is what is under test
        def construct(self, sample, timesteps, encoder_hidden_states):
            return (0.5 * sample + encoder_hidden_states.mean() + timesteps.reshape(-1, 1, 1, 1) / 1000.0,)

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type=prediction_type)
    rng = np.random.default_rng(0)
    latents, noise = (rng.standard_normal((6, 4, 8, 8)).astype(np.float32) for _ in range(2))
    context = rng.standard_normal((6, 5, 16)).astype(np.float32)
    t = np.array([0, 3, 40, 300, 700, 999], np.int32)  # SNR from ~1e3 (clean) to ~2e-5: both sides of gamma
    loss = unet_loss_cell(StandIn(), scheduler.alphas_cumprod.numpy(), prediction_type, gamma)(
        *(ms.Tensor(x) for x in (latents, context, noise, t)))

    tt = torch.from_numpy(t.astype(np.int64))
    noisy = scheduler.add_noise(torch.from_numpy(latents), torch.from_numpy(noise), tt)
    pred = 0.5 * noisy + float(context.mean()) + tt.reshape(-1, 1, 1, 1) / 1000.0
    target = (scheduler.get_velocity(torch.from_numpy(latents), torch.from_numpy(noise), tt)
              if prediction_type == "v_prediction" else torch.from_numpy(noise))
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    if gamma:
        snr = compute_snr(scheduler, tt)
        clipped = torch.minimum(snr, torch.full_like(snr, gamma))
        per_sample = per_sample * clipped / (snr + 1 if prediction_type == "v_prediction" else snr)
    np.testing.assert_allclose(float(loss.asnumpy()), float(per_sample.mean()), rtol=2e-5)


# --------------------------------------------------------------------------------------------------------------------
# Interrupted + resumed runs end exactly where uninterrupted ones do (graph mode, tiny sizes)
# --------------------------------------------------------------------------------------------------------------------
def _state(ckpt: Path) -> dict:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(ckpt / "train_state.ckpt")).items()}


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def _resume_from_step_one(run_dir: Path) -> Path:
    """Keep the step-1 checkpoint only (as if the run died during step 2); return the removed step-2 copy."""
    import shutil

    final = run_dir / "checkpoints" / "step-000002"
    kept = run_dir.parent / f"{run_dir.name}-step2"
    shutil.copytree(final, kept)
    shutil.rmtree(final)
    return kept


@pytest.fixture(scope="module")
def tiny_clip_run(runtime, tmp_path_factory):
    """A 2-step tiny CLIP-mini run with its export (also the text encoder of the tiny SD runs)."""
    from research.pmg.mini.clip_train import train_clip

    out = tmp_path_factory.mktemp("mini-clip")
    cfg = load_mini_config(MiniClipConfig, CLIP_YAML, TINY_CLIP + [f"export={out / 'export'}"])
    rt = dataclasses.replace(runtime, output_dir=out / "run")
    metrics = train_clip(cfg, rt, resume=False, progress=False, command="test")
    return cfg, rt, metrics


def test_clip_trainer_resumes_exactly_and_exports(tiny_clip_run):
    from research.pmg.mini.clip_train import train_clip
    from research.pmg.mini.manifest import read_manifest
    from research.pmg.models.clip import build_clip
    from research.pmg.config import ClipConfig

    cfg, rt, metrics = tiny_clip_run
    assert metrics["steps"] == 2 and np.isfinite(metrics["loss_last"])
    reference = _resume_from_step_one(rt.output_dir)
    again = train_clip(cfg, rt, resume=True, export=False, progress=False)
    assert again["steps"] == 2
    _assert_same_state(reference, rt.output_dir / "checkpoints" / "step-000002")
    log = [json.loads(line) for line in (rt.output_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]

    export = Path(cfg.export)
    manifest = read_manifest(export)
    assert manifest["kind"] == "clip" and manifest["metrics"]["steps"] == 2 and "model.safetensors" in manifest["files"]
    parts = build_clip(ClipConfig(path=str(export)), rt)  # the project's factory loads the export
    assert parts.image_size == 32 and len(parts.tokenizer) == 1000


def test_sd_trainer_resumes_exactly_exports_and_evaluates(tiny_clip_run, runtime, tmp_path, monkeypatch):
    from research.pmg.mini.manifest import read_manifest
    from research.pmg.mini.images import load_sticker_images
    from research.pmg.mini.sd_train import train_sd
    from research.pmg.train import dataset

    drawn_from = []  # the number of rows each batch is drawn from: the VAE's exclude its held-out stickers
    original = dataset.batch_indices
    monkeypatch.setattr(dataset, "batch_indices", lambda n, *args: drawn_from.append(n) or original(n, *args))
    clip_cfg, _, _ = tiny_clip_run
    cfg = load_mini_config(MiniSDConfig, SD_YAML, TINY_SD + [f"clip={clip_cfg.export}", f"export={tmp_path / 'sd'}",
                                                           "vae_train.holdout_every=3"])
    stickers = len(load_sticker_images(32, ["cats", "hearts"]))
    held_out = len(range(0, stickers, 3))
    rt = dataclasses.replace(runtime, output_dir=tmp_path / "run")
    first = train_sd(cfg, rt, resume=False, export=False, progress=False)
    assert first["vae"]["steps"] == first["unet"]["steps"] == 2
    vae_ref = _resume_from_step_one(rt.output_dir / "vae")
    unet_ref = _resume_from_step_one(rt.output_dir / "unet")
    metrics = train_sd(cfg, rt, resume=True, progress=False, command="test")

    export = Path(cfg.export)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (export / sub).is_dir()
    manifest = read_manifest(export)
    vae = manifest["metrics"]["vae"]
    assert manifest["kind"] == "stable-diffusion" and vae["scaling_factor"] > 0
    assert vae["held_out_stickers"] == held_out and 0 < vae["recon_psnr_held_out_db"] < 60
    assert set(drawn_from) == {stickers - held_out, stickers}  # VAE batches, UNet batches
    ev = metrics["eval"]["generated_vs_eval_captions"]
    assert ev["num_images"] == ev["num_captions"] == 4 and 0.0 <= ev["top1"] <= 1.0
    assert (export / "samples.png").is_file()
    _assert_same_state(vae_ref, rt.output_dir / "vae" / "checkpoints" / "step-000002")
    _assert_same_state(unet_ref, rt.output_dir / "unet" / "checkpoints" / "step-000002")


# --------------------------------------------------------------------------------------------------------------------
# The committed weights
# --------------------------------------------------------------------------------------------------------------------
def _committed(kind: str) -> Path:
    folder = ASSETS / kind
    if not (folder / "manifest.json").is_file():
        pytest.fail(f"{folder}: committed weights missing; rebuild with scripts/run_mini_{kind}.sh")
    return folder


@pytest.mark.parametrize("kind", ["clip", "sd"])
def test_committed_weights_match_their_manifest(kind):
    import hashlib

    from research.pmg.mini.images import load_sticker_images
    from research.pmg.mini.manifest import read_manifest

    folder = _committed(kind)
    manifest = read_manifest(folder)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    cfg = load_mini_config(MiniClipConfig if kind == "clip" else MiniSDConfig, ROOT / f"configs/mini/{kind}.yaml")
    data = load_sticker_images(cfg.data.image_size, cfg.data.themes)
    assert manifest["data"]["sha256"] == data.data_hash  # same stickers and captions as the training run
    assert manifest["command"].startswith(f"python -m research.pmg.mini.{kind}_train")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 6_000_000, f"{folder}: {size} bytes"


def test_committed_clip_does_not_regress_below_measured_real_sticker_retrieval(runtime):
    from research.pmg.config import ClipConfig
    from research.pmg.generate.scorer import ClipScorer, clip_image_processor
    from research.pmg.mini.images import load_sticker_images
    from research.pmg.mini.retrieval import retrieval_metrics
    from research.pmg.models.clip import build_clip

    folder = _committed("clip")
    parts = build_clip(ClipConfig(path=str(folder)), runtime)
    scorer = ClipScorer(parts, clip_image_processor(parts, folder))
    data = load_sticker_images(32, load_mini_config(MiniClipConfig, CLIP_YAML).data.themes)
    m = retrieval_metrics(scorer.image_features(data.images), scorer.text_features(data.captions),
                          np.arange(len(data)), data.themes)
    assert m["num_images"] == m["num_captions"] == 347
    below = {k: (m[k], measured) for k, measured in MEASURED_REAL_RETRIEVAL.items() if m[k] < measured - 1e-12}
    assert not below, below


def test_committed_mini_sd_samples_match_their_captions(runtime):
    """Acceptance (issue #10, targets in research/pmg/mini/README.md): one DDIM sample per evaluation caption, judged
    by CLIP-mini: top-1 >= 0.15 (7x chance) and theme >= 0.45 (3x chance)."""
    from research.pmg.mini.images import load_sticker_images
    from research.pmg.mini.sd_train import evaluate_sd

    sd_folder, clip_folder = _committed("sd"), _committed("clip")
    cfg = load_mini_config(MiniSDConfig, SD_YAML)
    data = load_sticker_images(cfg.data.image_size, cfg.data.themes)
    metrics, images, rows = evaluate_sd(sd_folder, clip_folder, cfg.eval, runtime, data, cfg.tokenizer_max_length)
    generated = metrics["generated_vs_eval_captions"]
    assert images.shape == (len(rows), 32, 32, 3) and generated["num_captions"] == len(rows) == 49
    # precondition, not a target: the judge recognises the real stickers (measured 48 of 49; chance 1 of 49)
    assert metrics["real_vs_eval_captions"]["top1"] >= 0.9, metrics
    assert generated["chance_top1"] == pytest.approx(1 / 49) and generated["chance_theme"] == pytest.approx(1 / 7)
    assert generated["top1"] >= TARGET_GENERATED_TOP1 and generated["theme"] >= TARGET_GENERATED_THEME, generated


def test_mini_pmg_config_builds_the_stage_models_from_the_committed_weights(runtime, monkeypatch):
    """configs/mini/pmg.yaml: the PMG stages get the mini SD and CLIP-mini through the normal model factory."""
    from research.pmg.config import load_config
    from research.pmg.models import build_clip_parts, build_diffusion_parts, resolve_tokenizers

    _committed("sd"), _committed("clip")
    monkeypatch.chdir(ROOT)  # the config's weight paths are relative to the repository, as typed on the command line
    cfg = load_config(ROOT / "configs/mini/pmg.yaml", [f"runtime.output_dir={runtime.output_dir}"])
    tokenizers = resolve_tokenizers(cfg, runtime)
    sd = build_diffusion_parts(cfg, runtime, tokenizers)
    clip = build_clip_parts(cfg, runtime, tokenizers)
    assert sd.cross_attention_dim == 64 and int(sd.unet.config.sample_size) == 8 and clip.image_size == 32
    assert sd.tokenizer.get_vocab() == clip.tokenizer.get_vocab()  # one caption vocabulary for SD and the judge
