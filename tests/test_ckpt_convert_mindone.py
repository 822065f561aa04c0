"""ckpt_convert sd on MindONE's own Stable Diffusion checkpoints (sd_v2-1_768_v-061732d1.ckpt and its kind).

Those are MindSpore .ckpt files under the parameter names of MindONE's ldm model (mindone
examples/stable_diffusion_v2, vendored by the official PMG code). Two independent checks:

- names: the converter's plan for the real SD 2.1 (768-v) and SD 1.5 configs names exactly the parameters, with
  their shapes, that MindONE's own list for those files holds (tools/model_conversion/ms_names_v2.txt, 1214
  names; ms_names_v1.txt, 1082), compared by a SHA-256 over the sorted "name [shape]" lines;
- values: a tiny SD 2.x checkpoint is written in that format by MindSpore's own save_checkpoint, under names made
  here from the original (CompVis/OpenCLIP) layout by a mapping written in this file, and converted; every
  output tensor must equal the diffusers weight it came from, bit for bit.
"""
import copy
import hashlib

import numpy as np
import pytest
import torch
import mindspore as ms

from ckpt_convert import ConversionError, sd
from ckpt_convert.__main__ import main
from ckpt_convert.sources import read_safetensors
from ckpt_convert.targets import mindone_spec
from research.pmg.cli import USER_ERROR_EXIT, run
from research.pmg.models.diffusion import build_diffusion
from research.pmg.runtime import set_execution_mode
from tests.hf_tiny_models import write_single_file
from tests.tiny_sd2 import SD2_CONTEXT, sd2_config, shared_tiny_sd2

# sha256 of "\n".join(sorted(f"{name} {list(shape)}")) over MindONE's ms_names_v2.txt / ms_names_v1.txt
# (mindspore-lab/models research/huawei-noah/PMG/stable_diffusion_v2/tools/model_conversion, as in mindone)
MINDONE_V2_NAMES = (1214, "e95865cd0ccab8cda6da0e4d01d75ae6dd9558f6ebabab27bfd3abad9407a473")
MINDONE_V1_NAMES = (1082, "39e9d1cbb3810ebc2bc7da1d2f8441d30293d322fac99d8112bd4f20c51c539b")

# The real models' diffusers configs (stabilityai/stable-diffusion-2-1, stable-diffusion-v1-5), architecture fields
SD21_UNET = {"_class_name": "UNet2DConditionModel", "attention_head_dim": [5, 10, 20, 20],
             "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "in_channels": 4,
             "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 4, "sample_size": 96,
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "upcast_attention": True,
             "use_linear_projection": True}
SD15_UNET = {**SD21_UNET, "attention_head_dim": 8, "cross_attention_dim": 768, "sample_size": 64,
             "upcast_attention": False, "use_linear_projection": False}
SD_VAE = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512],
          "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
          "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
          "sample_size": 768}
SD21_TEXT = {"architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
             "max_position_embeddings": 77, "num_attention_heads": 16, "num_hidden_layers": 23, "vocab_size": 49408}
SD15_TEXT = {**SD21_TEXT, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
             "num_attention_heads": 12, "num_hidden_layers": 12}


@pytest.mark.parametrize("unet, text, expected", [(SD21_UNET, SD21_TEXT, MINDONE_V2_NAMES),
                                                  (SD15_UNET, SD15_TEXT, MINDONE_V1_NAMES)], ids=["sd2.1-v", "sd1.5"])
def test_plan_names_mindone_parameters_of_the_real_models(unet, text, expected):
    configs = {"unet": unet, "vae": SD_VAE, "text_encoder": text}
    specs = {name: mindone_spec(*sd.MODELS[name][:2], config) for name, config in configs.items()}
    sources = {name: tuple(shape) for target in sd.mindone_ckpt_targets(specs, configs)
               for name, shape in target.sources}
    lines = sorted(f"{name} {list(shape)}" for name, shape in sources.items())
    assert (len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()) == expected
    if text is SD21_TEXT:  # a few of them, spelled out
        assert sources["cond_stage_model.transformer.embedding_table"] == (49408, 1024)
        assert sources["cond_stage_model.transformer.transformer_layer.resblocks.22.attn.attn.in_proj.weight"] == \
            (3072, 1024)
        assert sources["model.diffusion_model.output_blocks.2.1.conv.conv.weight"] == (1280, 1280, 3, 3)
        assert sources["model.diffusion_model.input_blocks.1.0.in_layers_norm.gamma"] == (320,)
        assert sources["first_stage_model.decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# A tiny checkpoint in MindONE's format
# ---------------------------------------------------------------------------------------------------------------------
_NORMS = {"norm", "norm1", "norm2", "norm3", "norm_out", "ln_1", "ln_2", "ln_final", "in_layers_norm",
          "out_layers_norm"}


def ldm_name(original: str) -> str:
    """MindONE's ldm parameter name for an original (CompVis UNet/VAE, OpenCLIP text) one, read off the ldm Cells:
    TextEncoder (embedding_table, transformer_layer.resblocks.i.{attn.attn.in_proj, c_fc, c_proj, ln_1, ln_2}), the
    UNet's conv_nd wrapper (``.conv``) and its ResBlock's in_layers_norm/_conv, out_layers_norm/_conv, and
    MindSpore's LayerNorm/GroupNorm parameters gamma/beta."""
    parts = original.split(".")
    if parts[0] == "cond_stage_model":
        rest = parts[2:]
        if rest == ["token_embedding", "weight"]:
            rest = ["embedding_table"]
        elif rest[0] == "transformer":
            layer, inner = rest[2], rest[3:]
            if inner[0] == "mlp":
                inner = inner[1:]
            elif inner[0] == "attn":
                inner = ["attn", "attn", "in_proj", inner[1][len("in_proj_"):]] if inner[1].startswith("in_proj_") \
                    else ["attn", "attn", *inner[1:]]
            rest = ["transformer_layer", "resblocks", layer, *inner]
        parts = ["cond_stage_model", "transformer", *rest]
    elif parts[0] == "model":
        module, leaf = parts[2:-1], parts[-1]
        for i, part in enumerate(module):
            if part in ("in_layers", "out_layers"):
                conv = module[i + 1] != "0"
                module = module[:i] + ([f"{part}_conv", "conv"] if conv else [f"{part}_norm"]) + module[i + 2:]
                break
        else:
            wrapped = (module == ["input_blocks", "0", "0"] or module == ["out", "2"] or module[-1] in
                       ("skip_connection", "op") or (module[0] == "output_blocks" and module[-1] == "conv"))
            if wrapped:
                module = [*module, "conv"]
        parts = ["model", "diffusion_model", *module, leaf]
    module, leaf = parts[:-1], parts[-1]
    if module[-1] in _NORMS or module == ["model", "diffusion_model", "out", "0"]:  # out.0: the UNet's last GroupNorm
        leaf = {"weight": "gamma", "bias": "beta"}[leaf]
    return ".".join([*module, leaf])


def write_mindone_ckpt(folder, path, *, extra_layer=False, changes=None) -> dict[str, np.ndarray]:
    """The tiny diffusers model of ``folder`` as MindONE's ldm would save it; returns {name: array} written.

    The original layout comes from tests.hf_tiny_models.write_single_file (checked against MindONE's
    single_file_utils below); OpenCLIP's projection is dropped (MindONE's TextEncoder has none) and its extra
    layer kept only with ``extra_layer``. The embeddings are fp16, as MindONE lists them for sd_v2-1_768_v.
    ``changes`` maps a name to None (drop it), a new name (rename) or an array (replace it).
    """
    from safetensors.numpy import load_file

    original_path = path.with_suffix(".original.safetensors")
    write_single_file(folder, original_path, open_clip=True)
    original = load_file(original_path)
    layers = int(np.max([int(k.split(".")[4]) for k in original if ".resblocks." in k]))
    tensors = {}
    for name, value in original.items():
        if name in ("betas", "cond_stage_model.model.text_projection") or \
                (not extra_layer and f".resblocks.{layers}." in name):
            continue
        new = ldm_name(name)
        tensors[new] = value.astype(np.float16) if new.endswith(("embedding_table", "positional_embedding")) else value
    for name, change in (changes or {}).items():
        value = tensors.pop(name)
        if isinstance(change, str):
            tensors[change] = value
        elif change is not None:
            tensors[name] = change
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in tensors.items()], str(path))
    return tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizers):
    return shared_tiny_sd2(tmp_path_factory, tiny_tokenizers.diffusion)


def diffusers_weights(folder) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {f"{name}/{key}": value for name, file in (("unet", "diffusion_pytorch_model.safetensors"),
                                                      ("vae", "diffusion_pytorch_model.safetensors"),
                                                      ("text_encoder", "model.safetensors"))
            for key, value in load_file(folder / name / file).items()}


def test_original_layout_of_the_tiny_sd2_agrees_with_mindone_single_file_utils(tiny, tmp_path):
    """The original-layout file the MindONE checkpoint is made from, against MindONE's CompVis -> diffusers code."""
    import json
    from types import SimpleNamespace

    from mindone.diffusers.loaders import single_file_utils as library
    from safetensors.numpy import load_file

    path = tmp_path / "v2.safetensors"
    write_single_file(tiny.folder, path, open_clip=True)
    original, weights = load_file(path), diffusers_weights(tiny.folder)
    config = {name: json.loads((tiny.folder / name / "config.json").read_text()) for name in ("unet", "vae")}
    text_model = SimpleNamespace(config=SimpleNamespace(hidden_size=SD2_CONTEXT))  # all MindONE's function reads
    converted = {"unet": library.convert_ldm_unet_checkpoint(dict(original), config["unet"]),
                 "vae": library.convert_ldm_vae_checkpoint(dict(original), config["vae"]),
                 "text_encoder": library.convert_open_clip_checkpoint(text_model, dict(original))}
    for name, tensors in converted.items():
        mine = {key[len(name) + 1:]: value for key, value in weights.items() if key.startswith(name + "/")}
        tensors = {key: np.asarray(value.asnumpy() if hasattr(value, "asnumpy") else value)
                   for key, value in tensors.items() if key in mine or name != "text_encoder"}
        # (MindONE drops OpenCLIP's layer 23 only, SD 2's size: the tiny tower's unused layer 2 is left out here)
        assert sorted(tensors) == sorted(mine), name
        assert all(np.array_equal(tensors[key], mine[key]) for key in mine), name


def test_mindone_ckpt_converts_key_by_key(tiny, tmp_path, monkeypatch, runtime):
    ckpt = tmp_path / "sd_v2-1_768_v-tiny.ckpt"
    written = write_mindone_ckpt(tiny.folder, ckpt, extra_layer=True)
    assert "cond_stage_model.transformer.transformer_layer.resblocks.0.attn.attn.in_proj.weight" in written
    assert "model.diffusion_model.out.0.gamma" in written and "model.diffusion_model.out.2.conv.weight" in written

    def no_pickle(*args, **kwargs):
        raise AssertionError("a MindSpore .ckpt is protobuf: it must be read without unpickling")

    monkeypatch.setattr(sd, "read_torch_pickle", no_pickle)
    dst = tmp_path / "out"
    summary = sd.convert(ckpt, dst, config=tiny.folder)  # no allow_pickle
    assert main(["sd", "--src", str(ckpt), "--config", str(tiny.folder), "--dst", str(tmp_path / "cli")]) == 0

    expected = diffusers_weights(tiny.folder)
    got = {f"{name}/{key}": ref for name in ("unet", "vae", "text_encoder")
           for key, ref in read_safetensors(next((dst / name).glob("*.safetensors"))).items()}
    assert sorted(got) == sorted(expected)
    fp16 = {"text_encoder/text_model.embeddings.token_embedding.weight",
            "text_encoder/text_model.embeddings.position_embedding.weight"}
    for name, want in expected.items():
        array = got[name].read()
        if name in fp16:  # passed through as the file holds them (--dtype keep)
            want = want.astype(np.float16)
        assert array.dtype == want.dtype and array.shape == want.shape, name
        assert np.array_equal(array.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), name

    # every tensor of the file is used, or ignored for a stated reason: here the OpenCLIP layer after SD 2's
    extra = {name for name in written if ".resblocks.2." in name}
    assert len(extra) == 12 and summary.ignored == dict.fromkeys(
        extra, "OpenCLIP layers after the one SD 2 takes its text features from")
    fused = sum(name.endswith("in_proj.weight") or name.endswith("in_proj.bias") for name in written) - 2
    assert summary.tensors == len(expected) == len(written) - len(extra) + 2 * fused  # q/k/v from one tensor
    assert summary.source_dtypes == {"fp32": len(expected) - 2, "fp16": 2}

    # PMG loads the folder (the fp16 embeddings cast to the runtime's fp32): its text encoder is diffusers' with
    # the same fp16-rounded embeddings, to float noise (measured 4e-6 at values up to 4)
    parts = build_diffusion(sd2_config(runtime.output_dir, dst).models.diffusion, runtime)
    reference = copy.deepcopy(tiny.pipe.text_encoder).eval()
    with torch.no_grad():
        embeddings = reference.text_model.embeddings
        for table in (embeddings.token_embedding, embeddings.position_embedding):
            table.weight.copy_(table.weight.half().float())
        ids = np.random.default_rng(0).integers(1, 998, (2, 32))
        want = reference(torch.tensor(ids))[0].numpy()
    set_execution_mode("pynative")
    try:
        hidden = parts.text_encoder(ms.Tensor(ids.astype(np.int32)))[0].asnumpy()
    finally:
        set_execution_mode("graph")
    print(f"text encoder from the MindONE ckpt: max abs diff {np.abs(hidden - want).max():.1e}")
    np.testing.assert_allclose(hidden, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("change, message", [
    ({"model.diffusion_model.out.2.conv.weight": "model.diffusion_model.out.2.weight"},
     r"missing in the source \(1\): model.diffusion_model.out.2.conv.weight \(for unet/conv_out.weight\); "
     r"unknown \(not part of this model\) \(1\): model.diffusion_model.out.2.weight"),
    ({"first_stage_model.decoder.mid.attn_1.norm.gamma": None},
     r"missing in the source \(1\): first_stage_model.decoder.mid.attn_1.norm.gamma \(for "
     r"vae/decoder.mid_block.attentions.0.group_norm.weight\)"),
    ({"cond_stage_model.transformer.transformer_layer.resblocks.1.attn.attn.in_proj.weight": np.zeros((96, 1024),
                                                                                                      np.float32)},
     r"mis-shaped \(1\): cond_stage_model.transformer.transformer_layer.resblocks.1.attn.attn.in_proj.weight "
     r"\(file \[96, 1024\], expected \[3072, 1024\]\)"),
], ids=["renamed", "missing", "mis-shaped"])
def test_mindone_ckpt_refusals(tiny, tmp_path, capsys, change, message):
    ckpt = tmp_path / "bad.ckpt"
    write_mindone_ckpt(tiny.folder, ckpt, changes=change)
    out = tmp_path / "out"
    assert run(main, ["sd", "--src", str(ckpt), "--config", str(tiny.folder), "--dst", str(out)]) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    with pytest.raises(ConversionError, match=message):
        sd.convert(ckpt, out, config=tiny.folder)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_unrecognised_files_fail_in_one_line(tiny, tmp_path, capsys):
    other = tmp_path / "other.ckpt"  # a MindSpore checkpoint, but not of a MindONE Stable Diffusion
    ms.save_checkpoint([{"name": "backbone.conv1.weight", "data": ms.Tensor(np.ones((2, 2), np.float32))}], str(other))
    garbage = tmp_path / "weights.ckpt"
    garbage.write_bytes(b"GGUF" + bytes(range(60)))
    for path, message in ((other, "a MindSpore checkpoint without MindONE Stable Diffusion parameters "
                                  "(model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.* "
                                  "absent; top-level names: backbone)"),
                          (garbage, "not a checkpoint format this converter reads")):
        argv = ["sd", "--src", str(path), "--config", str(tiny.folder), "--dst", str(tmp_path / "out")]
        assert run(main, argv) == USER_ERROR_EXIT
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
