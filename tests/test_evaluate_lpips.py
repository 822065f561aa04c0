"""MindSpore LPIPS against the reference ``lpips`` PyTorch package, on the same weights, through the converter.

The ``lpips`` package (installed with ``--no-deps``, see requirements-dev.txt) imports torchvision only for
the constructors ``tv.vgg16(pretrained=...).features`` and ``tv.alexnet(pretrained=...).features``. The
registry's torchvision does not import beside the CPU torch 2.13.0 wheel, so this test provides those two
constructors (plain ``torch.nn`` layers with torchvision's indices, checked below against torchvision's
published parameter layout) in a stand-in ``torchvision.models`` module, for the duration of the test only.
Everything else is the package's own code, unchanged: ``LPIPS.forward``, ``ScalingLayer``,
``normalize_tensor``, ``NetLinLayer``, ``spatial_average``, the slicing in ``pretrained_networks`` and the
loading of its shipped v0.1 head files. Backbones are randomly initialised (no ImageNet download); the heads
are the package's real ones, converted by ``ckpt_convert lpips``.
"""
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as photos
from torch import nn

import mindspore as ms

from research.pmg import images as im

# torchvision's parameter layout of vgg16().features / alexnet().features: (index, weight shape).
TORCHVISION_CONVS = {
    "vgg": [(0, (64, 3, 3, 3)), (2, (64, 64, 3, 3)), (5, (128, 64, 3, 3)), (7, (128, 128, 3, 3)),
            (10, (256, 128, 3, 3)), (12, (256, 256, 3, 3)), (14, (256, 256, 3, 3)), (17, (512, 256, 3, 3)),
            (19, (512, 512, 3, 3)), (21, (512, 512, 3, 3)), (24, (512, 512, 3, 3)), (26, (512, 512, 3, 3)),
            (28, (512, 512, 3, 3))],
    "alex": [(0, (64, 3, 11, 11)), (3, (192, 64, 5, 5)), (6, (384, 192, 3, 3)), (8, (256, 384, 3, 3)),
             (10, (256, 256, 3, 3))],
}


def _vgg16_features() -> nn.Sequential:
    layers, channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))


class _TorchvisionModel(nn.Module):
    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features


def torchvision_stand_in(built: list) -> types.ModuleType:
    """A ``torchvision`` module with just the two constructors lpips calls; records the models it builds."""
    def constructor(features):
        def build(pretrained=False, **_):
            if pretrained:
                raise AssertionError("the test never downloads ImageNet weights")
            model = _TorchvisionModel(features())
            built.append(model)
            return model
        return build

    models = types.ModuleType("torchvision.models")
    models.vgg16, models.alexnet = constructor(_vgg16_features), constructor(_alexnet_features)
    package = types.ModuleType("torchvision")
    package.models = models
    return package


@pytest.fixture(scope="module")
def lpips_package():
    """The real lpips package, imported against the stand-in torchvision; removed again afterwards."""
    built = []
    stand_in = torchvision_stand_in(built)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torchvision", stand_in)
        patch.setitem(sys.modules, "torchvision.models", stand_in.models)
        for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
            patch.delitem(sys.modules, name)
        import lpips

        yield lpips, built
        for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def real_pairs():
    """Real photos (skimage.data) at 64 px, each paired with another photo and with a noisy copy of itself."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    imgs = np.stack([im.fit(Image.fromarray(getattr(photos, n)()), 64, "center_crop") for n in names])
    noisy = np.clip(imgs + np.random.default_rng(0).normal(0, 30, imgs.shape), 0, 255).astype(np.uint8)
    a = np.concatenate([imgs, imgs])
    b = np.concatenate([np.roll(imgs, 1, axis=0), noisy])
    return im.to_signed(a), im.to_signed(b)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_reference_package(net, lpips_package, real_pairs, tmp_path, runtime):
    lpips, built = lpips_package
    from safetensors.torch import save_file

    from ckpt_convert import lpips as convert_lpips
    from research.pmg.models.lpips import load_lpips

    torch.manual_seed(0)
    reference = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False).eval()
    backbone = built[-1]
    # The stand-in is torchvision's layout, parameter for parameter.
    expected = {f"features.{i}.{kind}": (shape if kind == "weight" else shape[:1])
                for i, shape in TORCHVISION_CONVS[net] for kind in ("weight", "bias")}
    assert {k: tuple(v.shape) for k, v in backbone.state_dict().items()} == expected
    # The package's own code runs: its ScalingLayer and heads, and the head file it ships, loaded by itself.
    assert Path(lpips.__file__).parent.name == "lpips" and "site-packages" in lpips.__file__
    assert type(reference.scaling_layer).__module__ == "lpips.lpips"
    heads_file = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    shipped = torch.load(heads_file, map_location="cpu", weights_only=True)
    for k in range(5):
        assert torch.equal(getattr(reference, f"lin{k}").model[1].weight, shipped[f"lin{k}.model.1.weight"])

    # A torchvision-style backbone file (with the classifier users' files have) + the shipped heads -> .ckpt.
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    state["classifier.6.weight"] = torch.zeros(10, 16)
    save_file(state, tmp_path / f"{net}.safetensors")
    summary = convert_lpips.convert(tmp_path / f"{net}.safetensors", tmp_path / f"lpips_{net}.ckpt", heads=heads_file,
                                    allow_pickle=True)
    assert summary.tensors == len(expected) + 5 and "classifier.6.weight" in summary.ignored
    model = load_lpips(net, str(tmp_path / f"lpips_{net}.ckpt"))

    calls = {"normalize_tensor": 0, "spatial_average": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    a, b = real_pairs
    forward = sys.modules["lpips.lpips"]  # the module of LPIPS.forward (the package re-binds the name "lpips.lpips")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lpips, "normalize_tensor", counting("normalize_tensor", lpips.normalize_tensor))
        patch.setattr(forward, "spatial_average", counting("spatial_average", forward.spatial_average))
        with torch.no_grad():
            expected_d = reference(torch.from_numpy(a), torch.from_numpy(b)).numpy().reshape(-1)
    assert calls == {"normalize_tensor": 10, "spatial_average": 5}

    ours = model(ms.Tensor(a), ms.Tensor(b)).asnumpy()
    diff = np.abs(ours - expected_d).max()
    print(f"LPIPS {net}: max abs diff vs lpips package {diff:.2e} (values {np.round(expected_d, 4)})")
    assert ours.shape == (len(a),) and diff < 1e-4
    assert expected_d.min() > 0.01  # real distances, not a degenerate all-zero case

    # LPIPS(x, x) = 0, symmetric, and a pair's distance does not depend on the rest of the batch.
    np.testing.assert_allclose(model(ms.Tensor(a), ms.Tensor(a)).asnumpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(model(ms.Tensor(b), ms.Tensor(a)).asnumpy(), ours, rtol=0, atol=1e-6)
    shuffled = model(ms.Tensor(a[::-1].copy()), ms.Tensor(b[::-1].copy())).asnumpy()[::-1]
    np.testing.assert_allclose(shuffled, ours, rtol=0, atol=1e-6)


def test_lpips_cell_names_match_the_package_state_dict(lpips_package):
    lpips, _ = lpips_package
    from research.pmg.models.lpips import LPIPS

    for net in ("alex", "vgg"):
        reference = lpips.LPIPS(net=net, pnet_rand=True, pretrained=False, verbose=False)
        theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()
                  if not k.startswith(("scaling_layer.", "lins."))}
        ours = {k: tuple(p.shape) for k, p in LPIPS(net).parameters_and_names()}
        assert ours == theirs
