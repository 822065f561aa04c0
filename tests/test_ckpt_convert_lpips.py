"""ckpt_convert lpips: torchvision backbones + lpips v0.1 heads -> the MindSpore LPIPS .ckpt, checked and atomic.

Numeric parity of the converted model with the lpips package is in tests/test_evaluate_lpips.py.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import mindspore as ms

from ckpt_convert import ConversionError, lpips
from ckpt_convert.__main__ import main
from research.pmg.cli import USER_ERROR_EXIT, run
from research.pmg.models.lpips import CHANNELS, LPIPS
from research.pmg.models.weights import load_checkpoint_into
from tests.test_evaluate_lpips import TORCHVISION_CONVS
from tests.tiny_models import REPO


def torchvision_state(net: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict in torchvision's layout, classifier included, as the published .pth files hold."""
    rng = np.random.default_rng(seed)
    state = {}
    for index, shape in TORCHVISION_CONVS[net]:
        state[f"features.{index}.weight"] = rng.standard_normal(shape).astype(np.float32) * 0.05
        state[f"features.{index}.bias"] = rng.standard_normal(shape[:1]).astype(np.float32) * 0.05
    state["classifier.1.weight"] = rng.standard_normal((8, 16)).astype(np.float32)
    state["classifier.1.bias"] = np.zeros(8, np.float32)
    return state


def head_state(net: str, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"lin{k}.model.1.weight": np.abs(rng.standard_normal((1, c, 1, 1))).astype(np.float32)
            for k, c in enumerate(CHANNELS[net])}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips-src")
    for net in ("vgg", "alex"):
        save_file(torchvision_state(net), folder / f"{net}.safetensors", metadata={"format": "pt"})
        save_file(head_state(net), folder / f"{net}_heads.safetensors", metadata={"format": "pt"})
    return folder


def loaded(path: Path, net: str) -> dict[str, np.ndarray]:
    model = LPIPS(net)
    load_checkpoint_into(model, path, what="test")
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}


def test_safetensors_convert_torch_free_and_load_exactly(files, tmp_path):
    dst = tmp_path / "lpips_vgg.ckpt"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckpt_convert", "lpips",
                             "--src", str(files / "vgg.safetensors"), "--heads", str(files / "vgg_heads.safetensors"),
                             "--dst", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported
    assert "lpips vgg:" in result.stdout and "tensors     31 (every target parameter filled exactly once)" in \
        result.stdout and "ignored     2 source tensor(s): ImageNet classifier" in result.stdout
    weights = loaded(dst, "vgg")
    source = {**torchvision_state("vgg"), **head_state("vgg")}
    assert weights["net.slice1.0.weight"].shape == (64, 3, 3, 3)
    for index, _ in TORCHVISION_CONVS["vgg"]:
        k = 1 + sum(index >= end for end in (4, 9, 16, 23))
        np.testing.assert_array_equal(weights[f"net.slice{k}.{index}.weight"], source[f"features.{index}.weight"])
        np.testing.assert_array_equal(weights[f"net.slice{k}.{index}.bias"], source[f"features.{index}.bias"])
    for k in range(5):
        np.testing.assert_array_equal(weights[f"lin{k}.model.1.weight"], source[f"lin{k}.model.1.weight"])


def test_pickles_need_the_flag_and_give_the_same_weights(files, tmp_path, capsys):
    state = {k: torch.from_numpy(v) for k, v in torchvision_state("alex").items()}
    torch.save(state, tmp_path / "alexnet-owt.pth")  # how torchvision publishes its weights
    heads = {k: torch.from_numpy(v) for k, v in head_state("alex").items()}
    torch.save(heads, tmp_path / "alex.pth")  # how the lpips package ships its heads
    args = ["lpips", "--src", str(tmp_path / "alexnet-owt.pth"), "--heads", str(tmp_path / "alex.pth"),
            "--dst", str(tmp_path / "from_pickle.ckpt")]
    assert run(main, args) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alexnet-owt.pth is a pickle-based PyTorch file" in err and "--allow-pickle" in err
    assert not (tmp_path / "from_pickle.ckpt").exists()
    assert main(args + ["--allow-pickle"]) == 0
    from_pickle = lpips.convert(files / "alex.safetensors", tmp_path / "from_safetensors.ckpt",
                                heads=files / "alex_heads.safetensors")
    assert f"sha256:{from_pickle.checksum}" in capsys.readouterr().out  # same tensors either way
    assert from_pickle.tensors == 15 and from_pickle.parameters == sum(
        np.prod(s) + s[0] for _, s in TORCHVISION_CONVS["alex"]) + sum(CHANNELS["alex"])


def test_a_saved_lpips_state_dict_converts_alone(tmp_path):
    """An ``lpips.LPIPS().state_dict()`` (backbone, heads under two names, scaling constants) needs no --heads."""
    state = {name: np.full(tuple(p.shape), 0.5, np.float32) for name, p in LPIPS("alex").parameters_and_names()}
    state.update({f"lins.{k}.model.1.weight": state[f"lin{k}.model.1.weight"] for k in range(5)})
    state.update({"scaling_layer.shift": np.zeros((1, 3, 1, 1), np.float32),
                  "scaling_layer.scale": np.ones((1, 3, 1, 1), np.float32)})
    save_file(state, tmp_path / "lpips_alex_full.safetensors")
    summary = lpips.convert(tmp_path / "lpips_alex_full.safetensors", tmp_path / "out.ckpt")
    assert summary.tensors == 15 and len(summary.ignored) == 7
    assert set(summary.ignored.values()) == {"second name of the heads in a saved lpips.LPIPS (lins.k is lin{k})",
                                             "ScalingLayer constants (built into the model)"}
    assert "evaluate.lpips_net: alex" in summary.text()


def test_every_problem_is_named_and_nothing_is_written(files, tmp_path):
    state = torchvision_state("alex")
    del state["features.3.weight"]
    state["features.6.weight"] = state["features.6.weight"][:100]
    state["features.10.lora_A"] = np.zeros((4, 4), np.float32)
    save_file(state, tmp_path / "broken.safetensors")
    dst = tmp_path / "out.ckpt"
    with pytest.raises(ConversionError) as err:
        lpips.convert(tmp_path / "broken.safetensors", dst, heads=files / "alex_heads.safetensors")
    message = str(err.value)
    for part in ("missing in the source (1): features.3.weight (for net.slice2.3.weight)",
                 "mis-shaped (1): features.6.weight (file [100, 192, 3, 3], expected [384, 192, 3, 3])",
                 "unknown (not part of this model) (1): features.10.lora_A", "broken.safetensors"):
        assert part in message
    with pytest.raises(ConversionError, match=r"mis-shaped \(4\): lin1.model.1.weight \(file \[1, 128, 1, 1\], "
                                              r"expected \[1, 192, 1, 1\]\)"):
        lpips.convert(files / "alex.safetensors", dst, heads=files / "vgg_heads.safetensors")
    with pytest.raises(ConversionError, match="holds an AlexNet backbone but --net is vgg; pass --net alex"):
        lpips.convert(files / "alex.safetensors", dst, heads=files / "alex_heads.safetensors", net="vgg")
    with pytest.raises(ConversionError, match=r"no LPIPS heads \(lin0..lin4\) in .*pass --heads"):
        lpips.convert(files / "alex.safetensors", dst)
    with pytest.raises(ConversionError, match="both hold classifier.1.bias, classifier.1.weight, features.0.bias"):
        lpips.convert(files / "alex.safetensors", dst, heads=files / "alex.safetensors")
    with pytest.raises(ConversionError, match="--dst must name a .ckpt file"):
        lpips.convert(files / "alex.safetensors", tmp_path / "out.safetensors", heads=files / "alex_heads.safetensors")
    with pytest.raises(ConversionError, match="absent.pth: file not found"):
        lpips.convert(tmp_path / "absent.pth", dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors"]

    lpips.convert(files / "alex.safetensors", dst, heads=files / "alex_heads.safetensors")
    with pytest.raises(ConversionError, match="already exists; pass --overwrite"):
        lpips.convert(files / "alex.safetensors", dst, heads=files / "alex_heads.safetensors")
    lpips.convert(files / "alex.safetensors", dst, heads=files / "alex_heads.safetensors", dtype="fp16",
                  overwrite=True)
    assert ms.load_checkpoint(str(dst))["lin0.model.1.weight"].dtype == ms.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors", "out.ckpt"]
