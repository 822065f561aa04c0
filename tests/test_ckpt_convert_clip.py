"""ckpt_convert clip: an HF CLIPModel folder, converted, loads through the factory with HF's features."""
import json
import shutil

import numpy as np
import pytest
import torch

import mindspore as ms

from ckpt_convert import ConversionError, clip
from ckpt_convert.__main__ import main
from research.pmg.models.clip import build_clip
from research.pmg.runtime import set_execution_mode
from tests.hf_tiny_models import save_clip
from tests.tiny_models import random_ids, tiny_config


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory, tiny_tokenizers):
    folder = tmp_path_factory.mktemp("hf-clip")
    return folder, save_clip(folder, tiny_tokenizers.clip)


def test_features_equal_hf(hf_clip, runtime, tmp_path):
    folder, model = hf_clip
    dst = tmp_path / "clip"
    assert main(["clip", "--src", str(folder), "--dst", str(dst)]) == 0
    cfg = tiny_config(runtime.output_dir, f"models.clip.path={dst}").models.clip
    set_execution_mode("pynative")  # one forward pass each: compiling a graph would cost more than it saves
    try:
        parts = build_clip(cfg, runtime)
        rng = np.random.default_rng(0)
        ids = random_ids(rng, 2, 16, model.config.text_config.vocab_size)
        size = model.config.vision_config.image_size
        pixels = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        text = parts.model.get_text_features(ms.Tensor(ids)).asnumpy()
        image = parts.model.get_image_features(ms.Tensor(pixels)).asnumpy()
    finally:
        set_execution_mode("graph")
    with torch.no_grad():
        ref_text = model.get_text_features(torch.tensor(ids, dtype=torch.long)).numpy()
        ref_image = model.get_image_features(torch.tensor(pixels)).numpy()
    text_diff, image_diff = np.abs(text - ref_text).max(), np.abs(image - ref_image).max()
    print(f"clip text features max abs diff: {text_diff:.2e}, image features: {image_diff:.2e}")
    assert text_diff < 1e-4 and image_diff < 1e-4
    assert parts.tokenizer("a cat").input_ids[0] == parts.tokenizer.bos_token_id


def test_bf16_output_and_buffers_dropped(hf_clip, tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(hf_clip[0], src)
    weights = load_file(src / "model.safetensors")  # older transformers saved the position-id buffers too
    weights["text_model.embeddings.position_ids"] = np.arange(32)[None]
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    summary = clip.convert(src, tmp_path / "out", dtype="bf16")
    assert summary.dtypes == {"bf16": summary.tensors}
    assert set(summary.ignored) == {"text_model.embeddings.position_ids"}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def test_wrong_architecture_and_missing_tokenizer(hf_clip, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hf_clip[0], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "siglip", "architectures": ["SiglipModel"]}))
    with pytest.raises(ConversionError, match="wrong architecture: model_type 'siglip'"):
        clip.convert(src, tmp_path / "out")
    (src / "config.json").write_text(json.dumps(config))
    (src / "merges.txt").unlink()
    with pytest.raises(ConversionError, match="no merges.txt"):
        clip.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
