"""The CPU compatibility layer for MindONE (research/pmg/compat), op by op against NumPy references.

Every replacement is checked for values and gradients in PyNative and graph mode (the ``mode`` fixture); in graph
mode the op runs inside an ``nn.Cell`` compiled together with its backward pass. References are float64 NumPy;
reference gradients are central finite differences of the loss ``sum(out * random_weights)`` (analytic where the
finite difference would not follow torch's definition, e.g. embedding rows at ``padding_idx``).

Tolerances: values within 1e-5 (absolute and relative, float32); gradients within 1e-4 relative plus 1e-5
absolute, which is float32 accumulation error for these sizes and far below any wrong-formula error.
"""
from __future__ import annotations

import math
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, mint, nn

from research.pmg.compat import install_cpu_compat, is_installed, mint_cpu, originals

F = mint.nn.functional
VALUE_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------------------------------
class Call(nn.Cell):
    """``fn(*inputs, *args, **kwargs)`` as a Cell, so graph mode compiles the op with constant extra arguments."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def construct(self, *inputs):
        return self.fn(*inputs, *self.args, **self.kwargs)


class WeightedSum(nn.Cell):
    """``sum(out_i * weights_i)`` over the outputs of ``net``, returning the outputs as well (aux)."""

    def __init__(self, net, weights):
        super().__init__()
        self.net, self.weights = net, weights

    def construct(self, *inputs):
        outs = self.net(*inputs)
        if not isinstance(outs, (tuple, list)):
            outs = (outs,)
        loss = 0.0
        for out, weight in zip(outs, self.weights):
            loss = loss + (out * weight).sum()
        return loss, outs


def _as_list(outs):
    return list(outs) if isinstance(outs, (tuple, list)) else [outs]


def weighted_loss(ref, weights):
    """The float64 loss ``sum(ref(*arrays) * weights)``."""
    return lambda *arrays: sum(float((o * w).sum()) for o, w in zip(_as_list(ref(*arrays)), weights))


def finite_difference_grads(loss, arrays, wrt, eps=1e-6):
    """Central differences of ``loss(*arrays)`` with respect to ``arrays[i]`` for i in ``wrt`` (float64)."""
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    grads = []
    for i in wrt:
        array, grad = arrays[i], np.zeros_like(arrays[i])
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            array[idx] = saved + eps
            plus = loss(*arrays)
            array[idx] = saved - eps
            minus = loss(*arrays)
            array[idx] = saved
            grad[idx] = (plus - minus) / (2 * eps)
        grads.append(grad)
    return grads


def assert_matches_reference(net, inputs, ref, params=(), grad_ref=None, seed=0):
    """Run ``net`` on ``inputs`` and compare outputs and gradients with the NumPy reference.

    ``ref(*inputs, *param_values)`` returns the expected output(s) in float64. Gradients are taken with respect to
    the float inputs and ``params``; ``grad_ref(weights, *inputs, *param_values)`` may give them analytically.
    """
    param_values = [p.asnumpy() for p in params]
    arrays = [*inputs, *param_values]
    expected = _as_list(ref(*[a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]))
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(e.shape).astype(np.float32) for e in expected]

    float_inputs = tuple(i for i, a in enumerate(inputs) if a.dtype.kind == "f")
    value_and_grad = ms.value_and_grad(WeightedSum(net, tuple(Tensor(w) for w in weights)),
                                       grad_position=float_inputs or None, weights=list(params) or None,
                                       has_aux=True)
    (_, outs), grads = value_and_grad(*[Tensor(a) for a in inputs])
    outs = _as_list(outs)
    assert len(outs) == len(expected)
    for out, exp in zip(outs, expected):
        assert out.shape == exp.shape
        np.testing.assert_allclose(out.asnumpy(), exp, **VALUE_TOL)

    # value_and_grad returns (input grads, param grads) when asked for both, and a bare Tensor for a single one.
    grads = [*_as_list(grads[0]), *_as_list(grads[1])] if float_inputs and params else _as_list(grads)
    wrt = [*float_inputs, *range(len(inputs), len(arrays))]
    if grad_ref is not None:
        expected_grads = grad_ref([w.astype(np.float64) for w in weights], *arrays)
    else:
        expected_grads = finite_difference_grads(weighted_loss(ref, weights), arrays, wrt)
    assert len(grads) == len(expected_grads)
    for grad, exp in zip(grads, expected_grads):
        np.testing.assert_allclose(grad.asnumpy(), exp, **GRAD_TOL)


def patched_object(key):
    """The object now at a patch-record key ``"module:attribute.path"``."""
    module, attr = key.split(":")
    obj = sys.modules[module]
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# NumPy references (torch semantics)
# ---------------------------------------------------------------------------------------------------------------------
def conv2d_ref(x, w, b, stride, pads, dilation, groups):
    """Direct convolution over the explicitly padded input; ``pads`` = (top, bottom, left, right)."""
    (sh, sw), (dh, dw) = stride, dilation
    x = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    xg = x.reshape(n, groups, cg, h, wd)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    out = np.zeros((n, groups, o // groups, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xg[..., i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            out += np.einsum("ngchw,goc->ngohw", patch, wg[..., i, j])
    out = out.reshape(n, o, ho, wo)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def conv_transpose2d_ref(x, w, b, stride, padding, output_padding, groups, dilation):
    """Scatter every input pixel through the kernel, then crop ``padding`` from each side (torch's definition)."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    full_h, full_w = (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    xg = x.reshape(n, groups, c // groups, h, wd)
    wg = w.reshape(groups, c // groups, og, kh, kw)
    full = np.zeros((n, groups, og, full_h, full_w))
    for i in range(kh):
        for j in range(kw):
            full[..., i * dh: i * dh + sh * (h - 1) + 1: sh, j * dw: j * dw + sw * (wd - 1) + 1: sw] += np.einsum(
                "ngchw,gco->ngohw", xg, wg[..., i, j])
    out = full.reshape(n, groups * og, full_h, full_w)[:, :, ph: full_h - ph, pw: full_w - pw]
    return out if b is None else out + b.reshape(1, -1, 1, 1)


def layer_norm_ref(x, normalized_shape, w=None, b=None, eps=1e-5):
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


_erf = np.vectorize(math.erf)


def gelu_ref(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def pad_ref(x, pad, mode="constant", value=0.0):
    """torch F.pad: pairs from the last dimension backwards; negative amounts crop."""
    np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    for k in range(len(pad) // 2):
        axis = x.ndim - 1 - k
        before, after = pad[2 * k], pad[2 * k + 1]
        widths = [(0, 0)] * x.ndim
        widths[axis] = (max(before, 0), max(after, 0))
        kwargs = {"constant_values": value} if mode == "constant" else {}
        x = np.pad(x, widths, mode=np_mode, **kwargs)
        index = [slice(None)] * x.ndim
        index[axis] = slice(max(-before, 0), x.shape[axis] - max(-after, 0))
        x = x[tuple(index)]
    return x


def avg_pool2d_ref(x, k, s, p, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """torch's AvgPool2d window and divisor rules, written out with loops."""
    n, c, h, w = x.shape

    def out_size(size):
        out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input
            out -= 1
        return out

    ho, wo = out_size(h), out_size(w)
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            h0, w0 = i * s - p, j * s - p
            h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)
            padded_count = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            window = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3))
            if divisor_override:
                divisor = divisor_override
            else:
                divisor = padded_count if count_include_pad else (h1 - h0) * (w1 - w0)
            out[:, :, i, j] = window / divisor
    return out


def chunk_ref(x, chunks, dim):
    """torch.chunk: pieces of ceil(size / chunks), possibly fewer than ``chunks``."""
    size = -(-x.shape[dim] // chunks)
    return np.split(x, range(size, x.shape[dim], size), axis=dim)


def split_ref(x, split_size_or_sections, dim):
    if isinstance(split_size_or_sections, int):
        return np.split(x, range(split_size_or_sections, x.shape[dim], split_size_or_sections), axis=dim)
    return np.split(x, np.cumsum(split_size_or_sections)[:-1], axis=dim)


# ---------------------------------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------------------------------
CONV2D_CASES = {
    # name: (Conv2d kwargs, explicit (top, bottom, left, right) padding of the reference)
    "pad1_bias": (dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (1, 1, 1, 1)),
    "stride_dilation_groups": (dict(in_channels=4, out_channels=2, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
                                    dilation=(1, 2), groups=2, bias=False), (1, 1, 0, 0)),
    # Even kernel with dilation: torch puts the odd extra padding after (bottom/right).
    "same_even_kernel": (dict(in_channels=2, out_channels=2, kernel_size=(2, 3), padding="same", dilation=(3, 1)),
                         (1, 2, 1, 1)),
    "valid": (dict(in_channels=2, out_channels=2, kernel_size=3, padding="valid", stride=2), (0, 0, 0, 0)),
}


@pytest.mark.parametrize("case", CONV2D_CASES)
def test_conv2d(mode, case):
    kwargs, pads = CONV2D_CASES[case]
    conv = mint.nn.Conv2d(**kwargs)
    x = randn(np.random.default_rng(1), 2, kwargs["in_channels"], 6, 7)
    assert_matches_reference(
        conv, [x],
        lambda x, w, b=None: conv2d_ref(x, w, b, conv.stride, pads, conv.dilation, conv.groups),
        params=conv.trainable_params())


def test_conv2d_reflect_padding_mode(mode):
    conv = mint.nn.Conv2d(2, 2, 3, padding=(1, 2), padding_mode="reflect")
    x = randn(np.random.default_rng(2), 1, 2, 5, 6)
    assert_matches_reference(
        conv, [x],
        lambda x, w, b: conv2d_ref(pad_ref(x, (2, 2, 1, 1), "reflect"), w, b, (1, 1), (0, 0, 0, 0), (1, 1), 1),
        params=conv.trainable_params())


def test_conv2d_functional_unbatched(mode):
    rng = np.random.default_rng(19)
    x, w, b = randn(rng, 2, 5, 5), randn(rng, 3, 2, 3, 3), randn(rng, 3)
    assert_matches_reference(Call(F.conv2d, stride=2, padding=1), [x, w, b],
                             lambda x, w, b: conv2d_ref(x[None], w, b, (2, 2), (1, 1, 1, 1), (1, 1), 1)[0])


CONV_TRANSPOSE2D_CASES = {
    # name: (ConvTranspose2d kwargs, output_size passed to the call or None)
    "stride_padding_output_padding": (dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1,
                                           output_padding=1), None),
    "groups_dilation_no_bias": (dict(in_channels=4, out_channels=2, kernel_size=(2, 3), stride=(1, 2), padding=(0, 1),
                                     dilation=(2, 1), groups=2, bias=False), None),
    "output_size": (dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding=1), (8, 10)),
}


@pytest.mark.parametrize("case", CONV_TRANSPOSE2D_CASES)
def test_conv_transpose2d(mode, case):
    kwargs, output_size = CONV_TRANSPOSE2D_CASES[case]
    deconv = mint.nn.ConvTranspose2d(**kwargs)
    x = randn(np.random.default_rng(3), 2, kwargs["in_channels"], 4, 5)
    output_padding = deconv.output_padding
    if output_size is not None:  # what torch derives from output_size: the excess over the minimal size
        output_padding = tuple(output_size[i] - ((x.shape[2 + i] - 1) * deconv.stride[i] - 2 * deconv.padding[i]
                                                 + deconv.dilation[i] * (deconv.kernel_size[i] - 1) + 1)
                               for i in range(2))
    net = deconv if output_size is None else Call(deconv, output_size=output_size)

    def ref(x, w, b=None):
        return conv_transpose2d_ref(x, w, b, deconv.stride, deconv.padding, output_padding, deconv.groups,
                                    deconv.dilation)

    assert_matches_reference(net, [x], ref, params=deconv.trainable_params())


def test_conv_transpose2d_functional_unbatched(mode):
    rng = np.random.default_rng(20)
    x, w = randn(rng, 2, 3, 4), randn(rng, 2, 3, 2, 2)
    assert_matches_reference(Call(F.conv_transpose2d, None, 2), [x, w],
                             lambda x, w: conv_transpose2d_ref(x[None], w, None, (2, 2), (0, 0), (0, 0), 1, (1, 1))[0])


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation and activations
# ---------------------------------------------------------------------------------------------------------------------
LAYER_NORM_CASES = {
    "affine": dict(normalized_shape=5),
    "no_affine_2d_shape": dict(normalized_shape=(3, 5), elementwise_affine=False, eps=1e-3),
    "affine_no_bias_2d_shape": dict(normalized_shape=(3, 5), bias=False),
}


@pytest.mark.parametrize("case", LAYER_NORM_CASES)
def test_layer_norm(mode, case):
    kwargs = LAYER_NORM_CASES[case]
    norm = mint.nn.LayerNorm(**kwargs)
    rng = np.random.default_rng(4)
    for param in norm.trainable_params():  # non-trivial affine parameters, so their gradients are checked
        param.set_data(Tensor(1 + 0.5 * randn(rng, *param.shape)))
    x = randn(rng, 2, 3, 5)
    names = [name for name in ("weight", "bias") if getattr(norm, name) is not None]

    def ref(x, *affine):
        values = dict(zip(names, affine))
        return layer_norm_ref(x, norm.normalized_shape, values.get("weight"), values.get("bias"), norm.eps)

    assert_matches_reference(norm, [x], ref, params=norm.trainable_params())


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(mode, approximate):
    x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(2, 3, 4)
    assert_matches_reference(mint.nn.GELU(approximate=approximate), [x], lambda x: gelu_ref(x, approximate))


def test_gelu_functional(mode):
    x = randn(np.random.default_rng(5), 3, 4)
    assert_matches_reference(Call(F.gelu), [x], lambda x: gelu_ref(x, "none"))


def test_geglu_patched(mode):
    """MindONE's GEGLU (feed-forward of every SD transformer block) without Tensor.chunk in graph mode."""
    from mindone.diffusers.models.activations import GEGLU

    geglu = GEGLU(4, 3)
    x = randn(np.random.default_rng(6), 2, 5, 4)

    def ref(x, w, b):
        hidden, gate = np.split(x @ w.T + b, 2, axis=-1)
        return hidden * gelu_ref(gate, "none")

    assert_matches_reference(geglu, [x], ref, params=geglu.trainable_params())


# ---------------------------------------------------------------------------------------------------------------------
# Indexing, padding, pooling
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding(mode, padding_idx):
    table = mint.nn.Embedding(6, 4, padding_idx=padding_idx)
    table.weight.set_data(Tensor(randn(np.random.default_rng(7), 6, 4)))
    ids = np.array([[1, 2, 5], [2, 0, 1]], dtype=np.int32)

    def grad_ref(weights, ids, w):
        grad = np.zeros_like(w, dtype=np.float64)
        np.add.at(grad, ids, weights[0])
        if padding_idx is not None:  # torch: the padding row never receives gradient
            grad[padding_idx] = 0
        return [grad]

    assert_matches_reference(table, [ids], lambda ids, w: w[ids], params=table.trainable_params(), grad_ref=grad_ref)


def test_embedding_rejects_max_norm(runtime):
    with pytest.raises(NotImplementedError, match="max_norm"):
        F.embedding(Tensor(np.array([0, 1], np.int32)), Tensor(np.ones((2, 2), np.float32)), max_norm=1.0)


PAD_CASES = {
    # name: (pad, mode, value)
    "constant_asymmetric_value": ((1, 2, 0, 3), "constant", 0.5),
    "constant_negative_crops": ((-1, 2, 1, -2), "constant", None),
    "constant_three_dims": ((1, 0, 0, 1, 2, 1), "constant", -1.0),
    "reflect": ((2, 1, 1, 2), "reflect", None),
    "replicate": ((2, 1, 1, 2), "replicate", None),
    "circular": ((2, 1, 1, 2), "circular", None),
}


@pytest.mark.parametrize("case", PAD_CASES)
def test_pad(mode, case):
    pad, pad_mode, value = PAD_CASES[case]
    x = randn(np.random.default_rng(8), 2, 3, 4, 5)
    net = Call(F.pad, pad, pad_mode) if value is None else Call(F.pad, pad, pad_mode, value)
    assert_matches_reference(net, [x], lambda x: pad_ref(x, pad, pad_mode, 0.0 if value is None else value))


AVG_POOL2D_CASES = {
    "kernel2_default_stride": dict(kernel_size=2),
    "padding_ceil_exclude_pad": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    "padding_include_pad_divisor": dict(kernel_size=3, stride=2, padding=1, divisor_override=4),
}


@pytest.mark.parametrize("case", AVG_POOL2D_CASES)
def test_avg_pool2d(mode, case):
    kwargs = AVG_POOL2D_CASES[case]
    pool = mint.nn.AvgPool2d(**kwargs)
    x = randn(np.random.default_rng(9), 2, 3, 6, 7)
    k, p = kwargs["kernel_size"], kwargs.get("padding", 0)
    s = kwargs.get("stride", k)
    assert_matches_reference(pool, [x], lambda x: avg_pool2d_ref(
        x, k, s, p, kwargs.get("ceil_mode", False), kwargs.get("count_include_pad", True),
        kwargs.get("divisor_override")))


def test_avg_pool2d_functional(mode):
    x = randn(np.random.default_rng(10), 1, 2, 4, 4)
    assert_matches_reference(Call(F.avg_pool2d, 2, 2), [x], lambda x: avg_pool2d_ref(x, 2, 2, 0))


# ---------------------------------------------------------------------------------------------------------------------
# Tensor algebra and creation
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta,alpha", [(0.5, 2.0), (1, 1)])
def test_baddbmm(mode, beta, alpha):
    rng = np.random.default_rng(11)
    inp, b1, b2 = randn(rng, 2, 3, 4), randn(rng, 2, 3, 5), randn(rng, 2, 5, 4)
    assert_matches_reference(Call(mint.baddbmm, beta=beta, alpha=alpha), [inp, b1, b2],
                             lambda inp, b1, b2: beta * inp + alpha * (b1 @ b2))


def test_baddbmm_beta_zero_ignores_input(mode):
    """As in torch (and as MindONE's attention uses it with an uninitialised ``input``): NaN in input is ignored."""
    rng = np.random.default_rng(12)
    inp = np.full((2, 3, 4), np.nan, np.float32)
    b1, b2 = randn(rng, 2, 3, 5), randn(rng, 2, 5, 4)
    out = Call(mint.baddbmm, beta=0, alpha=0.3)(Tensor(inp), Tensor(b1), Tensor(b2)).asnumpy()
    np.testing.assert_allclose(out, 0.3 * (b1.astype(np.float64) @ b2), **VALUE_TOL)
    assert_matches_reference(Call(mint.baddbmm, Tensor(b1), Tensor(b2), beta=0, alpha=0.3),
                             [np.zeros((2, 3, 4), np.float32)], lambda inp: 0.3 * (b1.astype(np.float64) @ b2))


NORM_CASES = {
    # name: (mint.norm kwargs, numpy axis, keepdims)
    "p2_last_dim_keepdim": (dict(p=2, dim=-1, keepdim=True), -1, True),
    "fro_all": (dict(), None, False),
    "p2_two_dims": (dict(p=2, dim=(1, 2)), (1, 2), False),
}


@pytest.mark.parametrize("case", NORM_CASES)
def test_norm(mode, case):
    kwargs, axis, keepdims = NORM_CASES[case]
    x = randn(np.random.default_rng(13), 2, 3, 4)
    x[0, 1] = 0  # a zero vector: torch's gradient there is 0 (also what central differences give), not NaN
    assert_matches_reference(Call(mint.norm, **kwargs), [x],
                             lambda x: np.sqrt((x * x).sum(axis=axis, keepdims=keepdims)))


def test_functional_entry_points_are_the_tested_implementations(runtime):
    """The layers above call these functions, so their tests cover the mint.nn.functional entry points too."""
    for name in ("conv2d", "conv_transpose2d", "layer_norm", "gelu", "embedding", "pad", "avg_pool2d"):
        assert getattr(F, name) is getattr(mint_cpu, name)


def test_norm_rejects_other_orders(runtime):
    with pytest.raises(NotImplementedError, match="p=2"):
        mint.norm(Tensor(np.ones((2, 2), np.float32)), p=1)


def test_stack(mode):
    rng = np.random.default_rng(14)
    a, b = randn(rng, 2, 3), randn(rng, 2, 3)

    class Stack(nn.Cell):
        def construct(self, a, b):
            return mint.stack([a, b], dim=1)

    assert_matches_reference(Stack(), [a, b], lambda a, b: np.stack([a, b], axis=1))


@pytest.mark.parametrize("sizes", [3, [1, 4, 2]], ids=["int_uneven", "list"])
def test_split(mode, sizes):
    x = randn(np.random.default_rng(15), 2, 7, 3)
    assert_matches_reference(Call(mint.split, sizes, dim=1), [x], lambda x: split_ref(x, sizes, 1))


@pytest.mark.parametrize("length,chunks", [(7, 3), (6, 4), (4, 2)], ids=["uneven", "fewer_than_asked", "even"])
def test_chunk(mode, length, chunks):
    x = randn(np.random.default_rng(16), 2, length)
    assert_matches_reference(Call(mint.chunk, chunks, dim=-1), [x], lambda x: chunk_ref(x, chunks, -1))


ARANGE_CASES = {
    # name: (args, kwargs, expected numpy array with torch's default dtype)
    "end_only": ((5,), {}, np.arange(5, dtype=np.int64)),
    "start_end_step": ((1, 8, 3), {}, np.arange(1, 8, 3, dtype=np.int64)),
    "float_step": ((0.0, 1.0, 0.25), {}, np.arange(0.0, 1.0, 0.25, dtype=np.float32)),
    "dtype": ((2, 6), dict(dtype=ms.float32), np.arange(2, 6, dtype=np.float32)),
    "keyword_start_end": ((), dict(start=0, end=4, dtype=ms.float32), np.arange(0, 4, dtype=np.float32)),
}


@pytest.mark.parametrize("case", ARANGE_CASES)
def test_arange(mode, case):
    args, kwargs, expected = ARANGE_CASES[case]

    class Arange(nn.Cell):
        def construct(self):
            return mint.arange(*args, **kwargs)

    out = Arange()().asnumpy()
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def test_randn(mode):
    class Randn(nn.Cell):
        def construct(self):
            return mint.randn(64, 128), mint.randn((2, 3), dtype=ms.float16)

    sample, half = Randn()()
    assert sample.shape == (64, 128) and sample.dtype == ms.float32
    assert half.shape == (2, 3) and half.dtype == ms.float16
    values = sample.asnumpy()
    assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


def test_randn_rejects_generator(runtime):
    with pytest.raises(NotImplementedError, match="generator"):
        mint.randn(2, generator=ms.Generator())


# ---------------------------------------------------------------------------------------------------------------------
# MindFormers' Llama training path: cheaper CPU forms with the same results
# ---------------------------------------------------------------------------------------------------------------------
def softmax_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_row_softmax(mode):
    x = randn(np.random.default_rng(30), 2, 3, 5) * 3
    assert_matches_reference(mint_cpu.RowSoftmax(), [x], softmax_ref)


@pytest.mark.parametrize("dim", [-1, 2, 1], ids=["last", "last_positive", "middle"])
def test_softmax(mode, dim):
    x = randn(np.random.default_rng(32), 2, 3, 5) * 3

    def ref(x):
        e = np.exp(x - x.max(dim, keepdims=True))
        return e / e.sum(dim, keepdims=True)

    assert_matches_reference(Call(mint.softmax, dim=dim), [x], ref)


def llama_stub(seq_length=6):
    """What slice_causal_mask_cheaply and accept_shorter_inputs read of a built Llama: ``model.casual_mask``."""
    from types import SimpleNamespace

    from mindformers.modules.transformer.transformer import LowerTriangularMaskWithDynamic

    mask = LowerTriangularMaskWithDynamic(seq_length=seq_length, compute_type=ms.float32, pad_token_id=0)
    return SimpleNamespace(model=SimpleNamespace(casual_mask=mask))


class Attend(nn.Cell):
    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def construct(self, query, key, value, mask):
        return self.attention._attn(query, key, value, mask)


def test_llama_attention(mode):
    """LLamaAttention._attn (scale on the query, RowSoftmax): softmax(q k^T / sqrt(d) + mask) v, heads merged."""
    from mindformers.models.llama.llama_transformer import LLamaAttention

    assert mint_cpu.install_llama_cpu_compat()
    assert LLamaAttention._attn is mint_cpu._llama_attn
    attention = LLamaAttention(seq_length=6, dim=8, n_heads=2, compute_dtype=ms.float32)
    rng = np.random.default_rng(31)
    query, key, value = randn(rng, 2, 2, 6, 4), randn(rng, 2, 2, 8, 4), randn(rng, 2, 2, 8, 4)  # 2 prefix keys
    mask = np.where(rng.random((2, 1, 6, 8)) < 0.3, -10000.0, 0.0).astype(np.float32)

    def ref(query, key, value, mask):
        probs = softmax_ref(query @ key.swapaxes(-1, -2) / 2.0 + mask)
        return (probs @ value).transpose(0, 2, 1, 3).reshape(2, 6, 8)

    assert_matches_reference(Attend(attention), [query, key, value, mask], ref)


def test_llama_causal_mask_slice(mode):
    """The causal mask of a shorter input, sliced by SliceFromOrigin: padding and the future hidden (-10000)."""
    from research.pmg.models.llama import accept_shorter_inputs

    llama = llama_stub(seq_length=6)
    assert accept_shorter_inputs(llama)  # slices the mask to the input's length, with SliceFromOrigin on CPU
    assert isinstance(llama.model.casual_mask.slice, mint_cpu.SliceFromOrigin)
    tokens = np.array([[5, 6, 0, 0], [7, 0, 8, 9]], np.int32)
    keep = (tokens != 0)[:, None, :] * np.tril(np.ones((4, 4)))[None]
    expected = ((1 - keep) * -10000.0)[:, None]
    out = Call(llama.model.casual_mask)(Tensor(tokens))
    np.testing.assert_array_equal(out.asnumpy(), expected.astype(np.float32))


def test_llama_cpu_compat_is_a_no_op_off_cpu(runtime, monkeypatch):
    llama = llama_stub()
    real_get_context = ms.get_context
    monkeypatch.setattr(ms, "get_context",
                        lambda key: "Ascend" if key == "device_target" else real_get_context(key))
    assert mint_cpu.install_llama_cpu_compat() is False
    assert mint_cpu.slice_causal_mask_cheaply(llama.model.casual_mask) is False
    assert not isinstance(llama.model.casual_mask.slice, mint_cpu.SliceFromOrigin)


# ---------------------------------------------------------------------------------------------------------------------
# MindONE spots, checkpoints, installation
# ---------------------------------------------------------------------------------------------------------------------
def test_ddpm_previous_timestep(runtime):
    """DDPMScheduler.step looks up the previous timestep without NonZeroExt (no CPU kernel)."""
    from mindone.diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    timesteps = [int(t) for t in scheduler.timesteps.asnumpy()]
    assert [int(scheduler.previous_timestep(t)) for t in scheduler.timesteps] == timesteps[1:] + [-1]
    sample = Tensor(randn(np.random.default_rng(17), 1, 2, 4, 4))
    out = scheduler.step(sample * 0.1, scheduler.timesteps[-1], sample)[0]
    assert out.shape == sample.shape and np.isfinite(out.asnumpy()).all()


LAYERS = {
    # name: (constructor arguments); every one must have the original's parameter names and shapes
    "Conv2d": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "ConvTranspose2d": dict(in_channels=4, out_channels=2, kernel_size=3, stride=2),
    "LayerNorm": dict(normalized_shape=(3, 4)),
    "Embedding": dict(num_embeddings=7, embedding_dim=3),
    "AvgPool2d": dict(kernel_size=2),
}


@pytest.mark.parametrize("name", LAYERS)
def test_replaced_layer_keeps_parameters(runtime, name):
    original = originals()[f"mindspore.mint.nn:{name}"]
    replacement = getattr(mint.nn, name)
    assert replacement is not original and issubclass(replacement, original)
    before, after = original(**LAYERS[name]), replacement(**LAYERS[name])
    assert [(n, p.shape) for n, p in before.parameters_and_names()] == \
           [(n, p.shape) for n, p in after.parameters_and_names()]
    # A checkpoint of the original loads into the replacement with nothing left over.
    not_loaded, _ = ms.load_param_into_net(after, before.parameters_dict(), strict_load=True)
    assert not not_loaded
    for (_, p), (_, q) in zip(before.parameters_and_names(), after.parameters_and_names()):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy())


def test_install_is_idempotent(runtime):
    assert is_installed()
    record = originals()
    patched = {key: patched_object(key) for key in record}
    assert install_cpu_compat() is True
    assert originals() == record
    assert {key: patched_object(key) for key in record} == patched
    # The record still holds the true originals, not replacements recorded by a second install.
    assert all(record[key] is not patched[key] for key in record)
    assert not any(getattr(obj, "__module__", "").startswith("research.pmg") for obj in record.values())
    assert mint.nn.Conv2d is mint_cpu.Conv2d


def test_install_is_a_no_op_off_cpu(runtime, monkeypatch):
    record = originals()
    patched = {key: patched_object(key) for key in record}
    real_get_context = ms.get_context
    monkeypatch.setattr(ms, "get_context",
                        lambda key: "Ascend" if key == "device_target" else real_get_context(key))
    assert install_cpu_compat() is False
    assert originals() == record
    assert {key: patched_object(key) for key in record} == patched


def test_tiny_unet_forward_backward_graph_mode(runtime):
    """A tiny SD-style UNet (cross-attention, GEGLU, up/down sampling) runs forward and backward, compiled."""
    from mindone.diffusers import UNet2DConditionModel

    assert ms.get_context("mode") == ms.GRAPH_MODE
    ms.set_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, attention_head_dim=4)

    class Denoise(nn.Cell):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def construct(self, sample, timestep, context):
            return self.unet(sample, timestep, encoder_hidden_states=context)[0]

    rng = np.random.default_rng(18)
    sample, context = Tensor(randn(rng, 2, 4, 8, 8)), Tensor(randn(rng, 2, 3, 16))
    timestep = Tensor(np.array([10, 500], np.int32))
    weights = Tensor(randn(rng, 2, 4, 8, 8))
    (loss, (out,)), (grad_sample, grad_context) = ms.value_and_grad(
        WeightedSum(Denoise(), (weights,)), grad_position=(0, 2), has_aux=True)(sample, timestep, context)
    assert out.shape == (2, 4, 8, 8)
    for value in (loss, out, grad_sample, grad_context):
        assert np.isfinite(value.asnumpy()).all()
    assert np.abs(grad_sample.asnumpy()).sum() > 0 and np.abs(grad_context.asnumpy()).sum() > 0
