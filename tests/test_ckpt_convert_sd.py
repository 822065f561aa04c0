"""ckpt_convert sd: diffusers folders and single files load through the factory with diffusers' numbers."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import mindspore as ms

from ckpt_convert import ConversionError, sd
from ckpt_convert.__main__ import main
from ckpt_convert.sources import read_safetensors
from research.pmg.models.diffusion import build_diffusion
from research.pmg.runtime import set_execution_mode
from tests.hf_tiny_models import save_stable_diffusion, write_single_file
from tests.tiny_models import REPO, random_ids, tiny_config


@pytest.fixture(scope="module")
def hf_sd(tmp_path_factory, tiny_tokenizers):
    """A tiny diffusers Stable Diffusion folder and the PyTorch pipeline it holds."""
    folder = tmp_path_factory.mktemp("hf-sd")
    return folder, save_stable_diffusion(folder, tiny_tokenizers.diffusion)


@pytest.fixture(scope="module")
def converted(hf_sd, tmp_path_factory):
    dst = tmp_path_factory.mktemp("sd-out") / "sd"
    summary = sd.convert(hf_sd[0], dst)
    return dst, summary


def _file_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unet_vae_text_encoder_equal_diffusers(hf_sd, converted, runtime):
    _, pipe = hf_sd
    cfg = tiny_config(runtime.output_dir, f"models.diffusion.path={converted[0]}").models.diffusion
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    steps = np.array([10, 700], dtype=np.int64)
    context = rng.standard_normal((2, 6, pipe.unet.config.cross_attention_dim)).astype(np.float32)
    ids = random_ids(rng, 2, cfg.tokenizer_max_length, pipe.text_encoder.config.vocab_size)
    set_execution_mode("pynative")  # one forward pass each: compiling a graph would cost more than it saves
    try:
        parts = build_diffusion(cfg, runtime)
        noise = parts.unet(ms.Tensor(latents), ms.Tensor(steps.astype(np.int32)), ms.Tensor(context))[0].asnumpy()
        image = parts.vae.decode(ms.Tensor(latents))[0].asnumpy()
        hidden = parts.text_encoder(ms.Tensor(ids))[0].asnumpy()
    finally:
        set_execution_mode("graph")
    with torch.no_grad():
        ref_noise = pipe.unet(torch.tensor(latents), torch.tensor(steps), torch.tensor(context)).sample.numpy()
        ref_image = pipe.vae.decode(torch.tensor(latents)).sample.numpy()
        ref_hidden = pipe.text_encoder(torch.tensor(ids, dtype=torch.long))[0].numpy()
    diffs = {name: float(np.abs(a - b).max()) for name, a, b in
             (("unet", noise, ref_noise), ("vae decode", image, ref_image), ("text encoder", hidden, ref_hidden))}
    print("sd max abs diff: " + ", ".join(f"{name} {d:.2e}" for name, d in diffs.items()))
    assert all(d < 1e-4 for d in diffs.values()), diffs
    assert parts.scheduler.config.num_train_timesteps == pipe.scheduler.config.num_train_timesteps


def test_single_file_gives_identical_weights(hf_sd, converted, tmp_path):
    folder_out, folder_summary = converted
    single = tmp_path / "v1-tiny.safetensors"
    write_single_file(hf_sd[0], single)
    dst = tmp_path / "from-single"
    assert main(["sd", "--src", str(single), "--config", str(hf_sd[0]), "--dst", str(dst)]) == 0
    assert _file_bytes(dst) == _file_bytes(folder_out)  # same weights, configs, tokenizer, scheduler, byte for byte


def test_single_file_names_agree_with_mindone(hf_sd, tmp_path):
    """The converter's original-name table against MindONE's own single-file conversion (an independent copy)."""
    from mindone.diffusers.loaders import single_file_utils as library
    from safetensors.numpy import load_file

    folder = hf_sd[0]
    config = {name: json.loads((folder / name / "config.json").read_text()) for name in ("unet", "vae")}
    expected = {name: load_file(folder / name / file) for name, file in (
        ("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"))}

    def same(got, want):
        got = {k: v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v) for k, v in got.items()}
        return set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)

    for open_clip in (False, True):
        path = tmp_path / f"open_clip-{open_clip}.safetensors"
        write_single_file(folder, path, open_clip=open_clip)
        original = load_file(path)
        assert same(library.convert_ldm_unet_checkpoint(dict(original), config["unet"]), expected["unet"])
        assert same(library.convert_ldm_vae_checkpoint(dict(original), config["vae"]), expected["vae"])
        if open_clip:  # MindONE drops OpenCLIP layer 23 only (SD 2's size); the tiny model's extra layer is 2
            text = library.convert_open_clip_checkpoint(_HiddenSize(expected["text_encoder"]), dict(original))
            text = {k: v for k, v in text.items() if k in expected["text_encoder"]}
        else:
            text = library.convert_ldm_clip_checkpoint(dict(original))
        assert same(text, expected["text_encoder"])


class _HiddenSize:
    """The one attribute MindONE's OpenCLIP conversion reads from the text model it is given."""

    def __init__(self, weights):
        self.config = type("Config", (), {"hidden_size": weights["text_model.final_layer_norm.weight"].shape[0]})


def test_sd2_layout_and_ema(hf_sd, converted, tmp_path):
    single = tmp_path / "v2-tiny.safetensors"
    write_single_file(hf_sd[0], single, open_clip=True, ema=True)
    summary = sd.convert(single, tmp_path / "non-ema", config=hf_sd[0])
    assert summary.checksum == converted[1].checksum
    reasons = set(summary.ignored.values())
    assert {"EMA copy of the UNet (pass --ema to convert it instead)",
            "OpenCLIP layers after the one SD 2 takes its text features from"} <= reasons
    sd.convert(single, tmp_path / "ema", config=hf_sd[0], ema=True)
    ema = read_safetensors(tmp_path / "ema" / "unet" / "diffusion_pytorch_model.safetensors")
    plain = read_safetensors(converted[0] / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(np.array_equal(ema[name].read(), plain[name].read() + 1) for name in plain)


def test_mindspore_ckpt_copies_load_strictly(hf_sd, converted, runtime, tmp_path):
    from mindone.diffusers import AutoencoderKL, UNet2DConditionModel
    from mindone.transformers import CLIPTextModel
    from transformers import CLIPTextConfig

    from ckpt_convert.targets import Spec
    from research.pmg.models.weights import load_checkpoint_into

    dst = tmp_path / "sd"
    sd.convert(hf_sd[0], dst, ckpt=True)
    config = {name: json.loads((dst / name / "config.json").read_text()) for name in ("unet", "vae")}
    models = {"unet": (UNet2DConditionModel.from_config(config["unet"]), "diffusers"),
              "vae": (AutoencoderKL.from_config(config["vae"]), "diffusers"),
              "text_encoder": (CLIPTextModel(CLIPTextConfig.from_pretrained(dst / "text_encoder")), "transformers")}
    for name, (model, library) in models.items():
        load_checkpoint_into(model, next((dst / name).glob("*.ckpt")), what=name)  # strict: all, nothing extra
        params, names = dict(model.parameters_and_names()), Spec(model, library).mindspore_names
        weights = read_safetensors(next((converted[0] / name).glob("*.safetensors")))
        assert all(np.array_equal(ref.read(), params[names[hf]].asnumpy()) for hf, ref in weights.items())


def test_single_file_refusals(hf_sd, tmp_path):
    single = tmp_path / "v1-tiny.safetensors"
    stray = {"model.diffusion_model.label_emb.0.0.weight": np.zeros((4, 4), np.float32)}
    write_single_file(hf_sd[0], single, extra=stray)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="carries no configuration: pass --config"):
        sd.convert(single, out / "sd")
    with pytest.raises(ConversionError, match=r"unknown \(not part of this model\) \(1\): "
                                              r"model.diffusion_model.label_emb.0.0.weight"):
        sd.convert(single, out / "sd", config=hf_sd[0])
    with pytest.raises(ConversionError, match="no EMA weights"):
        write_single_file(hf_sd[0], single)
        sd.convert(single, out / "sd", config=hf_sd[0], ema=True)
    assert list(out.iterdir()) == []


def test_variant_weight_files(hf_sd, converted, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_sd[0], src)
    for weights in src.glob("*/*.safetensors"):  # as save_pretrained(variant="fp16") names them
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    with pytest.raises(ConversionError, match="no weights found"):
        sd.convert(src, tmp_path / "plain")
    assert sd.convert(src, tmp_path / "variant", variant="fp16").checksum == converted[1].checksum


def test_folder_refusals(hf_sd, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_sd[0], src)
    out = tmp_path / "out"
    out.mkdir()
    config = json.loads((src / "unet" / "config.json").read_text())
    (src / "unet" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ConversionError, match="unet/config.json: wrong architecture: 'UNet2DModel'"):
        sd.convert(src, out / "sd")
    (src / "unet" / "config.json").write_text(json.dumps(config))
    shutil.rmtree(src / "scheduler")
    with pytest.raises(ConversionError, match="no 'scheduler' folder"):
        sd.convert(src, out / "sd")
    assert list(out.iterdir()) == []


def test_cli_never_imports_torch(hf_sd, tmp_path):
    """The whole CLI run, MindONE's diffusers and transformers included, with torch installed but never imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckpt_convert", "sd", "--src", str(hf_sd[0]),
                             "--dst", str(tmp_path / "out"), "--dtype", "fp16"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"mindone.diffusers", "mindone.transformers", "transformers"} <= imported
    assert not [name for name in imported if name == "torch" or name.startswith("torch.")]
    assert result.stdout.startswith("sd ") and "fp16 x364" in result.stdout and "checksum    sha256:" in result.stdout
