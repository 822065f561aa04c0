"""LPIPS v0.1 (Zhang et al., CVPR 2018) in MindSpore: the learned perceptual distance of the ``lpips`` package.

The layout mirrors the reference PyTorch package (``lpips.LPIPS(net=..., version='0.1')``) so that its
weights carry over by name: ``net.slice{1..5}.<i>`` are torchvision's ``features.<i>`` layers of VGG16 or
AlexNet, cut after the same ReLUs; ``lin{0..4}.model.1`` are the 1x1 linear heads (index 0 was a dropout,
identity at evaluation, so it is not built). ``ckpt_convert lpips`` writes a checkpoint with exactly these
parameter names. Distance of two images::

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(s(x))) - n(f_l(s(y))))^2 )

with ``s`` the package's ScalingLayer (inputs in [-1, 1] shifted and scaled towards ImageNet statistics),
``f_l`` the backbone features after layer l, ``n`` unit normalisation over channels (eps 1e-10, added to
the norm as the package does) and ``w_l`` the non-negative head weights.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import mindspore as ms
from mindspore import nn, ops

NETS = ("vgg", "alex")
# Channels of the five feature maps each head reads (lpips.LPIPS.chns).
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
# ScalingLayer constants of lpips v0.1: the ImageNet mean/std mapped from [0, 1] to [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

# torchvision ``features`` layers: ("conv", in, out, kernel, stride, padding), ("relu",), ("pool", kernel, stride).
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# lpips.pretrained_networks cuts torchvision's layer list at these indices (end exclusive) into five slices.
_SLICE_ENDS = {"vgg": (4, 9, 16, 23, 30), "alex": (2, 5, 8, 10, 12)}


def _torchvision_layers(net: str) -> list[tuple]:
    """The first layers of torchvision's ``vgg16().features`` / ``alexnet().features``, in their index order."""
    if net == "alex":
        return [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool", 3, 2), ("conv", 64, 192, 5, 1, 2), ("relu",),
                ("pool", 3, 2), ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",),
                ("conv", 256, 256, 3, 1, 1), ("relu",)]
    layers, channels = [], 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(("pool", 2, 2))
        else:
            layers += [("conv", channels, v, 3, 1, 1), ("relu",)]
            channels = v
    return layers


def _layer(spec: tuple) -> nn.Cell:
    if spec[0] == "conv":
        _, cin, cout, kernel, stride, padding = spec
        return nn.Conv2d(cin, cout, kernel, stride=stride, pad_mode="pad", padding=padding, has_bias=True)
    if spec[0] == "relu":
        return nn.ReLU()
    return nn.MaxPool2d(kernel_size=spec[1], stride=spec[2], pad_mode="valid")  # torch: no padding, floor


class Backbone(nn.Cell):
    """VGG16 or AlexNet convolutional features, returning the five maps LPIPS compares.

    ``construct(x (b, 3, h, w))`` returns a tuple of five ``(b, c_l, h_l, w_l)`` maps (``CHANNELS[net]``).
    """

    def __init__(self, net: str):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
        layers, start = _torchvision_layers(net), 0
        for k, end in enumerate(_SLICE_ENDS[net], start=1):
            cells = OrderedDict((str(i), _layer(layers[i])) for i in range(start, end))
            setattr(self, f"slice{k}", nn.SequentialCell(cells))
            start = end

    def construct(self, x):
        h1 = self.slice1(x)
        h2 = self.slice2(h1)
        h3 = self.slice3(h2)
        h4 = self.slice4(h3)
        h5 = self.slice5(h4)
        return h1, h2, h3, h4, h5


class ScalingLayer(nn.Cell):
    """``(x - shift) / scale`` per RGB channel: ``(b, 3, h, w)`` -> same. Constants, not parameters."""

    def __init__(self):
        super().__init__()
        self.shift = ms.Tensor(np.array(SHIFT, np.float32).reshape(1, 3, 1, 1))
        self.scale = ms.Tensor(np.array(SCALE, np.float32).reshape(1, 3, 1, 1))

    def construct(self, x):
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Cell):
    """A v0.1 head: 1x1 convolution without bias from ``channels`` to one: ``(b, c, h, w)`` -> ``(b, 1, h, w)``."""

    def __init__(self, channels: int):
        super().__init__()
        # Named "1" as in lpips' Sequential(Dropout, Conv2d), so the package's head weights load by name.
        self.model = nn.SequentialCell(OrderedDict([("1", nn.Conv2d(channels, 1, 1, pad_mode="valid",
                                                                    has_bias=False))]))

    def construct(self, x):
        return self.model(x)


def normalize_tensor(x):
    """Unit length over channels as ``lpips.normalize_tensor``: ``x / (||x||_2 + 1e-10)``, ``(b, c, h, w)``."""
    return x / (ops.sqrt(ops.sum(x * x, dim=1, keepdim=True)) + EPS)


def spatial_average(x):
    """Mean over height and width: ``(b, 1, h, w)`` -> ``(b,)``."""
    return ops.mean(x, axis=(1, 2, 3))


class LPIPS(nn.Cell):
    """LPIPS v0.1 distance between two batches of images.

    ``construct(in0, in1)``: both ``(batch, 3, h, w)`` float32 RGB in [-1, 1] (the package's convention;
    ``normalize=False``); returns ``(batch,)`` distances, 0 for identical images. Load weights with
    :func:`load_lpips`.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = Backbone(net)
        chns = CHANNELS[net]
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (NetLinLayer(c) for c in chns)
        self.set_train(False)

    def construct(self, in0, in1):
        f0 = self.net(self.scaling_layer(in0))
        f1 = self.net(self.scaling_layer(in1))
        return (self._layer(self.lin0, f0[0], f1[0]) + self._layer(self.lin1, f0[1], f1[1])
                + self._layer(self.lin2, f0[2], f1[2]) + self._layer(self.lin3, f0[3], f1[3])
                + self._layer(self.lin4, f0[4], f1[4]))

    def _layer(self, head, a, b):
        diff = normalize_tensor(a) - normalize_tensor(b)
        return spatial_average(head(diff * diff))


def load_lpips(net: str, weights: str, *, what: str = "LPIPS") -> LPIPS:
    """An :class:`LPIPS` with ``weights`` (a ``.ckpt`` from ``python -m ckpt_convert lpips``) loaded strictly."""
    from research.pmg.models.weights import load_checkpoint_into

    model = LPIPS(net)
    load_checkpoint_into(model, weights, what=f"{what} ({net})")
    for param in model.get_parameters():
        param.requires_grad = False
    return model
