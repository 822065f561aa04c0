"""``python -m research.pmg.mini.clip_train --config configs/mini/clip.yaml [--resume]``: train CLIP-mini.

Builds the caption tokenizer (CLIP byte-level BPE on the bundled corpus plus the captions), trains a small
``mindone.transformers.CLIPModel`` with the symmetric contrastive loss on (augmented sticker, caption) pairs,
measures caption retrieval on the un-augmented stickers, and exports a CLIPModel folder (weights, tokenizer,
image processor, ``manifest.json``) that ``models.clip.path`` can point at. Run folder: ``<output_dir>``.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from research.pmg.cli import ArgumentParser, run
from research.pmg.config import ConfigError
from research.pmg.mini.config import MiniClipConfig, MiniTokenizerConfig, load_mini_config

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def build_caption_tokenizer(captions: list[str], cfg: MiniTokenizerConfig, out_dir: Path, max_length: int) -> Path:
    """CLIP BPE files in ``out_dir`` from the bundled corpus plus ``caption_repeats`` copies of the captions.

    Raises ConfigError when a caption does not fit ``max_length`` tokens with its start and end tokens.
    """
    from research.pmg.models.tokenizers import build_clip_tokenizer, load_clip_tokenizer, read_tiny_corpus

    build_clip_tokenizer(read_tiny_corpus() + list(captions) * cfg.caption_repeats, cfg.vocab_size, out_dir)
    tokenizer = load_clip_tokenizer(out_dir, max_length)
    longest = max(captions, key=lambda c: len(tokenizer(c).input_ids))
    if len(tokenizer(longest).input_ids) > max_length:
        raise ConfigError(f"caption {longest!r} needs {len(tokenizer(longest).input_ids)} tokens, more than the text "
                          f"tower's max_position_embeddings ({max_length})")
    return out_dir


def caption_ids(tokenizer, captions: list[str]) -> np.ndarray:
    """``(n, model_max_length)`` int32, padded with the end token as the PMG scorer pads."""
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="np").input_ids.astype(np.int32)


def build_clip_model(cfg: MiniClipConfig, tokenizer):
    from mindone.transformers import CLIPModel
    from transformers import CLIPConfig

    from research.pmg.models.diffusion import check_arch
    from transformers import CLIPTextConfig, CLIPVisionConfig

    check_arch(CLIPTextConfig, cfg.model.text_config, f"{cfg.source}: model.text_config")
    check_arch(CLIPVisionConfig, cfg.model.vision_config, f"{cfg.source}: model.vision_config")
    vision = dict(cfg.model.vision_config)
    if vision.setdefault("image_size", cfg.data.image_size) != cfg.data.image_size:
        raise ConfigError(f"{cfg.source}: model.vision_config.image_size must equal data.image_size")
    text = dict(cfg.model.text_config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.model.projection_dim,
                                 logit_scale_init_value=cfg.model.logit_scale))
    model.logit_scale.requires_grad = False
    return model


def contrastive_loss_cell(model):
    """Cell ``(pixels (b, 3, s, s), ids (b, n)) -> loss``: symmetric InfoNCE over the batch (CLIP's loss)."""
    import mindspore as ms
    from mindspore import nn, ops

    class ContrastiveLoss(nn.Cell):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def construct(self, pixels, ids):
            image = self.clip.get_image_features(pixels)
            text = self.clip.get_text_features(ids)
            image = image / ops.sqrt((image * image).sum(-1, keepdims=True) + 1e-12)
            text = text / ops.sqrt((text * text).sum(-1, keepdims=True) + 1e-12)
            scale = ops.clamp(ops.exp(self.clip.logit_scale), 1.0, 100.0)
            logits = scale * ops.matmul(image, text.T)
            eye = ops.eye(logits.shape[0], logits.shape[0], ms.float32)
            rows = logits - ops.logsumexp(logits, 1, True)
            cols = logits - ops.logsumexp(logits, 0, True)
            return -((rows * eye).sum() + (cols * eye).sum()) / (2.0 * logits.shape[0])

    return ContrastiveLoss(model)


def clip_features(model, pixels: np.ndarray, ids: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(image features, text features) of normalised pixels and token ids, float32."""
    import mindspore as ms

    image = [model.get_image_features(ms.Tensor(pixels[i:i + batch])).asnumpy() for i in range(0, len(pixels), batch)]
    text = [model.get_text_features(ms.Tensor(ids[i:i + batch])).asnumpy() for i in range(0, len(ids), batch)]
    return np.concatenate(image), np.concatenate(text)


def export_clip(model, tokenizer_dir: Path, image_size: int, folder: Path) -> None:
    """A CLIPModel folder (``save_pretrained``) with the tokenizer files and image processor, replaced atomically."""
    from transformers import CLIPImageProcessor

    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, tmp / name)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(str(tmp))
    _replace_dir(tmp, folder)


def _replace_dir(tmp: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def train_clip(cfg: MiniClipConfig, runtime, *, resume: bool, stop_after: int | None = None, export: bool = True,
               progress: bool = True, command: str = "") -> dict:
    """Train CLIP-mini; returns the metrics (and writes the export folder with its manifest when ``export``)."""
    import mindspore as ms

    from research.pmg.mini.images import augment, clip_pixels, data_info, load_sticker_images
    from research.pmg.mini.manifest import write_manifest
    from research.pmg.mini.retrieval import retrieval_metrics
    from research.pmg.mini.trainer import build_step, run_metrics, train
    from research.pmg.models.tokenizers import load_clip_tokenizer
    from research.pmg.runtime import seed_everything
    from research.pmg.train.dataset import batch_indices

    t0 = time.time()
    out = runtime.output_dir
    data = load_sticker_images(cfg.data.image_size, cfg.data.themes)
    max_length = int(cfg.model.text_config.get("max_position_embeddings", 77))
    tokenizer_dir = build_caption_tokenizer(data.captions, cfg.tokenizer, out / "tokenizer", max_length)
    tokenizer = load_clip_tokenizer(tokenizer_dir, max_length)
    ids = caption_ids(tokenizer, data.captions)

    seed_everything(cfg.runtime.seed)  # the same initial weights every build (resume overwrites them)
    model = build_clip_model(cfg, tokenizer)
    loss_net = contrastive_loss_cell(model)
    step_cell = build_step(loss_net, cfg.train)
    seed, tc = cfg.runtime.seed, cfg.train

    def batch(step: int):
        rows = batch_indices(len(data), step, 0, 1, tc.batch_size, seed)  # distinct stickers within a batch
        images = data.images[rows]
        if tc.augment:
            images = augment(images, np.random.default_rng([seed, step, 7]))
        return ms.Tensor(clip_pixels(images)), ms.Tensor(ids[rows])

    result = train("clip", step_cell, batch, tc, out, resume=resume, stop_after=stop_after, progress=progress)
    model.set_train(False)
    image_features, text_features = clip_features(model, clip_pixels(data.images), ids)
    metrics = {**run_metrics(result),
               "train_cpu_seconds": round(result.cpu_seconds, 1),  # this process's alone (the SD trainer's: summed)
               "real_images": retrieval_metrics(image_features, text_features, np.arange(len(data)), data.themes)}
    if export and result.steps_done >= tc.max_steps:
        folder = Path(cfg.export)
        export_clip(model, tokenizer_dir, cfg.data.image_size, folder)
        metrics["wall_seconds"] = round(time.time() - t0, 1)
        metrics["process_cpu_seconds"] = round(time.process_time(), 1)
        write_manifest(folder, kind="clip", cfg=cfg, data=data_info(data), command=command, metrics=metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m research.pmg.mini.clip_train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mini/clip.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_steps=100 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    parser.add_argument("--no-export", action="store_true", help="train and measure only; leave the export folder")
    args = parser.parse_args(argv)
    cfg = load_mini_config(MiniClipConfig, args.config, args.overrides)

    from research.pmg.mini.config import config_dict
    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    _dump(config_dict(cfg), runtime.output_dir / "config.yaml")
    command = " ".join(["python -m research.pmg.mini.clip_train"] + (argv if argv is not None else sys.argv[1:]))
    metrics = train_clip(cfg, runtime, resume=args.resume, export=not args.no_export, command=command)
    real = metrics["real_images"]
    print(f"CLIP-mini: {metrics['steps']} steps, loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}; "
          f"real stickers retrieve their caption top-1 {real['top1']:.3f} / top-5 {real['top5']:.3f} of "
          f"{real['num_captions']} (chance {real['chance_top1']:.4f}), theme {real['theme']:.3f}")
    if not args.no_export:
        print(f"exported: {cfg.export}")
    return 0


def _dump(data: dict, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


if __name__ == "__main__":
    sys.exit(run(main))
