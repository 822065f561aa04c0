"""CPU stand-ins for the ``mindspore.mint`` ops that MindONE builds on but MindSpore 2.7.2 cannot run on CPU.

MindONE 0.5 writes its diffusers and transformers layers with ``mindspore.mint`` (PyTorch-style) ops. Many of
those map to "Ext" primitives that only have Ascend kernels, so on CPU they fail with "The kernel Conv2DExt
unregistered" (PyNative, sometimes one call late because launches are asynchronous) or "Kernel select failed"
(graph mode). This module re-implements each of them with older primitives that do have CPU kernels and
forward and backward, keeping the torch-style signatures and, for layers, the parameter names and shapes, so
checkpoints converted for Ascend load unchanged.

MindONE looks ``mint.xxx`` up when a layer is built or called, so the only way to redirect it without vendoring
MindONE is to patch the ``mindspore.mint`` namespace, plus two MindONE methods that reach a missing kernel through
a Tensor method, which no namespace patch can redirect. :func:`install_cpu_compat` does that, only on CPU: Ascend
keeps the native fused kernels. It must run before models are built, which
``research.pmg.runtime.setup_runtime`` guarantees.

Every patch is listed in ``_MINT_PATCHES`` and ``_MINDONE_PATCHES``; each replacement's docstring says why it
exists. ``tests/test_compat.py`` checks them against NumPy references, values and gradients, in both modes.
A few replace ops that do run on CPU but slowly there (the attention's softmax and causal mask, see "CPU speed");
:func:`install_llama_cpu_compat` patches the Llama's attention (called before any Llama is built) and
:func:`slice_causal_mask_cheaply` a built model's causal mask.

Known limit: in graph mode ``Tensor.chunk(n, dim=...)`` and ``Tensor.split(size, dim=...)`` (keyword ``dim``)
still lower to kernels CPU lacks; project code should call ``mint.chunk`` / ``mint.split`` instead.
"""
from __future__ import annotations

import sys

import mindspore as ms
from mindspore import mint, nn, ops

# The patch record: "mindspore.mint.nn:Conv2d" (module:attribute) -> the object there before install. It is the
# only global state; it keeps install idempotent and lets tests compare replacements with the originals.
_ORIGINALS: dict[str, object] = {}

_OrigConv2d = mint.nn.Conv2d
_OrigConvTranspose2d = mint.nn.ConvTranspose2d
_OrigLayerNorm = mint.nn.LayerNorm
_OrigEmbedding = mint.nn.Embedding
_OrigAvgPool2d = mint.nn.AvgPool2d


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 1:
        return (value[0], value[0])
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return (value[0], value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Convolutions (Conv2DExt, ConvTranspose2D: no CPU kernel). The classic Conv2D / Conv2DBackpropInput primitives
# have CPU kernels with groups, dilation and asymmetric explicit padding, which covers the torch semantics.
# ---------------------------------------------------------------------------------------------------------------------
def _conv2d_padding(padding, kernel_size, dilation) -> tuple[int, int, int, int]:
    """Torch-style padding (int, pair, 'valid', 'same') as the (top, bottom, left, right) of ``ops.Conv2D``."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            # Same split as torch: the extra row/column of an odd total goes after (bottom/right).
            total_h, total_w = dilation[0] * (kernel_size[0] - 1), dilation[1] * (kernel_size[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(f"conv2d padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    ph, pw = _pair(padding, "conv2d padding")
    return (ph, ph, pw, pw)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``mint.nn.functional.conv2d``: input ``(N, C_in, H, W)`` or ``(C_in, H, W)``, weight
    ``(C_out, C_in / groups, kH, kW)``, bias ``(C_out,)``."""
    unbatched = input.ndim == 3
    if unbatched:
        input = input.unsqueeze(0)
    stride, dilation = _pair(stride, "conv2d stride"), _pair(dilation, "conv2d dilation")
    kernel_size = (weight.shape[2], weight.shape[3])
    if padding == "same" and stride != (1, 1):
        raise ValueError("conv2d padding='same' is not supported for strided convolutions (as in torch)")
    pad = _conv2d_padding(padding, kernel_size, dilation)
    conv = ops.Conv2D(weight.shape[0], kernel_size, pad_mode="pad", pad=pad, stride=stride, dilation=dilation,
                      group=groups)
    out = conv(input, weight)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    if unbatched:
        out = out.squeeze(0)
    return out


class Conv2d(_OrigConv2d):
    """``mint.nn.Conv2d`` on :func:`conv2d`; same parameters (``weight``, ``bias``) as the original."""

    def construct(self, input):
        if self.padding_mode != "zeros":
            # _reversed_padding is the torch F.pad tuple the original computes for non-zero padding modes.
            input = pad(input, self._reversed_padding, mode=self.padding_mode)
            return conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """``mint.nn.functional.conv_transpose2d``: input ``(N, C_in, H, W)``, weight ``(C_in, C_out / groups, kH, kW)``.

    A transposed convolution is the input-gradient of a convolution, so it runs on ``Conv2DBackpropInput``
    (``ops.Conv2DTranspose``) with the output size torch would produce, which is where ``output_padding`` goes.
    """
    unbatched = input.ndim == 3
    if unbatched:
        input = input.unsqueeze(0)
    stride, padding = _pair(stride, "conv_transpose2d stride"), _pair(padding, "conv_transpose2d padding")
    dilation = _pair(dilation, "conv_transpose2d dilation")
    output_padding = _pair(output_padding, "conv_transpose2d output_padding")
    kernel_size = (weight.shape[2], weight.shape[3])
    out_size = [(input.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel_size[i] - 1)
                + output_padding[i] + 1 for i in range(2)]
    deconv = ops.Conv2DTranspose(weight.shape[0], kernel_size, pad_mode="pad",
                                 pad=(padding[0], padding[0], padding[1], padding[1]), stride=stride,
                                 dilation=dilation, group=groups)
    out = deconv(input, weight, (input.shape[0], weight.shape[1] * groups, out_size[0], out_size[1]))
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    if unbatched:
        out = out.squeeze(0)
    return out


class ConvTranspose2d(_OrigConvTranspose2d):
    """``mint.nn.ConvTranspose2d`` on :func:`conv_transpose2d`; same parameters as the original."""

    def construct(self, input, output_size=None):
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation)


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation and activations (LayerNormExt, GeluExt: no CPU kernel).
# ---------------------------------------------------------------------------------------------------------------------
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``mint.nn.functional.layer_norm`` over the trailing ``len(normalized_shape)`` axes, on the classic
    ``LayerNorm`` primitive (fused CPU kernel, also for the backward pass)."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    axis = input.ndim - len(normalized_shape)
    if weight is None:
        weight = ops.ones(normalized_shape, input.dtype)
    if bias is None:
        bias = ops.zeros(normalized_shape, input.dtype)
    return ops.LayerNorm(begin_norm_axis=axis, begin_params_axis=axis, epsilon=eps)(input, weight, bias)[0]


class LayerNorm(_OrigLayerNorm):
    """``mint.nn.LayerNorm`` on :func:`layer_norm`; same parameters (``weight``, ``bias``) as the original."""

    def construct(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def gelu(input, approximate="none"):
    """``mint.nn.functional.gelu``: exact erf form, or the tanh form with ``approximate='tanh'``.

    ``ops.gelu`` builds the exact form from ``Erf`` and the tanh form from the classic ``GeLU`` primitive (whose
    CPU kernel is the tanh approximation); both have CPU kernels. ``mint.nn.GELU`` needs no replacement class:
    its ``construct`` calls this function through the ``mint.nn.functional`` module. Replacing the class would
    even break it, since its ``__init__`` calls ``super(GELU, self)`` through the patched ``mint.nn`` name.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return ops.gelu(input, approximate=approximate)


# ---------------------------------------------------------------------------------------------------------------------
# Indexing, padding, pooling (Embedding, ConstantPadND and the Pad2D family, AvgPool2D: no CPU kernel).
# ---------------------------------------------------------------------------------------------------------------------
def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False):
    """``mint.nn.functional.embedding``: ``weight[input]`` by ``Gather``. Rows at ``padding_idx`` get no gradient,
    as in torch."""
    if max_norm is not None or scale_grad_by_freq:
        raise NotImplementedError("CPU embedding supports neither max_norm nor scale_grad_by_freq")
    out = ops.gather(weight, input, 0)
    if padding_idx is not None:
        if padding_idx < 0:
            padding_idx = weight.shape[0] + padding_idx
        is_pad = (input == padding_idx).expand_dims(-1)
        out = ops.select(is_pad.broadcast_to(out.shape), ops.stop_gradient(out), out)
    return out


class Embedding(_OrigEmbedding):
    """``mint.nn.Embedding`` on :func:`embedding`; same parameter (``weight``) as the original."""

    def construct(self, input):
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                         self.scale_grad_by_freq)


def pad(input, pad, mode="constant", value=None):
    """``mint.nn.functional.pad`` with torch's ``pad`` tuple (last dimension first, negative values crop).

    ``ops.pad`` (PadV3, CPU kernel) takes the same arguments; the mint version dispatches to ConstantPadND and
    Reflection/ReplicationPad kernels that CPU lacks, for every mode.
    """
    if mode == "constant":
        return ops.pad(input, tuple(pad), mode="constant", value=0.0 if value is None else value)
    if value is not None and value != 0:
        raise ValueError(f"pad value is only used in constant mode, got mode={mode!r}, value={value!r}")
    return ops.pad(input, tuple(pad), mode=mode)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """``mint.nn.functional.avg_pool2d`` on ``ops.avg_pool2d`` (AvgPool3D, CPU kernel), input ``(N, C, H, W)``."""
    return ops.avg_pool2d(input, kernel_size, kernel_size if stride is None else stride, padding, ceil_mode,
                          count_include_pad, 0 if divisor_override is None else divisor_override)


class AvgPool2d(_OrigAvgPool2d):
    """``mint.nn.AvgPool2d`` on :func:`avg_pool2d`."""

    def construct(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


# ---------------------------------------------------------------------------------------------------------------------
# Tensor algebra and creation (Baddbmm, LinalgVectorNorm, StackExt, Arange, Randn: no CPU kernel; SplitWithSize,
# SplitTensor and Chunk: no CPU kernel in graph mode, where mint.split/chunk always lower to them).
# ---------------------------------------------------------------------------------------------------------------------
def baddbmm(input, batch1, batch2, *, beta=1, alpha=1):
    """``mint.baddbmm``: ``beta * input + alpha * batch1 @ batch2``; as in torch, ``input`` is ignored (NaN and
    inf included) when ``beta == 0``."""
    out = ops.bmm(batch1, batch2)
    if alpha != 1:
        out = out * alpha
    if beta == 0:
        return out
    if beta != 1:
        input = input * beta
    return out + input


def norm(input, p="fro", dim=None, keepdim=False, *, dtype=None):
    """``mint.norm`` for the Euclidean / Frobenius norm (``p`` of 2 or ``'fro'``) over ``dim`` (None = all).

    The gradient of a zero norm is 0, as in torch, rather than the NaN a bare ``sqrt`` would give.
    """
    if p not in ("fro", 2, 2.0):
        raise NotImplementedError(f"CPU mint.norm supports only p=2 and p='fro', got p={p!r}")
    if dtype is not None:
        input = input.astype(dtype)
    if dim is None:
        dim = tuple(range(input.ndim))
    squares = ops.sum(input * input, dim, keepdim)
    positive = squares > 0
    return ops.select(positive, ops.sqrt(ops.select(positive, squares, ops.ones_like(squares))),
                      ops.zeros_like(squares))


def stack(tensors, dim=0):
    """``mint.stack`` on the classic ``Stack`` primitive."""
    return ops.stack(tensors, dim)


def split(tensor, split_size_or_sections, dim=0):
    """``mint.split``: chunks of ``split_size_or_sections`` (the last may be smaller) or of the listed sizes."""
    if isinstance(split_size_or_sections, (list, tuple)):
        split_size_or_sections = tuple(split_size_or_sections)
    return ops.split(tensor, split_size_or_sections, dim)


def chunk(input, chunks, dim=0):
    """``mint.chunk`` with torch's rule: pieces of ``ceil(size / chunks)``, so there may be fewer than ``chunks``."""
    if chunks <= 0:
        raise ValueError(f"chunk expects chunks > 0, got {chunks}")
    size = input.shape[dim]
    return ops.split(input, max(1, -(-size // chunks)), dim)


def arange(start=0, end=None, step=1, *, dtype=None):
    """``mint.arange`` on ``Range``: int64 for integer arguments, float32 otherwise, unless ``dtype`` is given."""
    if end is None:
        start, end = 0, start
    return ops.arange(start, end, step, dtype=dtype)


def randn(*size, generator=None, dtype=None):
    """``mint.randn`` on ``StandardNormal``, seeded by the global seed (``ms.set_seed``)."""
    if generator is not None:
        raise NotImplementedError("CPU mint.randn does not take a generator; seed with mindspore.set_seed")
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return ops.randn(size, dtype=ms.float32 if dtype is None else dtype)


# ---------------------------------------------------------------------------------------------------------------------
# MindONE call sites that the mint patch cannot reach.
# ---------------------------------------------------------------------------------------------------------------------
def _geglu_construct(self, hidden_states):
    """``GEGLU.construct`` without ``Tensor.chunk(2, dim=-1)``, which graph mode lowers to the Chunk kernel
    (absent on CPU) whatever ``mint.chunk`` is bound to."""
    hidden_states, gate = chunk(self.proj(hidden_states), 2, dim=-1)
    return hidden_states * self.gelu(gate)


def _ddpm_previous_timestep(self, timestep):
    """``DDPMScheduler.previous_timestep`` without ``Tensor.nonzero(as_tuple=True)``: that lowers to NonZeroExt,
    which has no CPU kernel; plain ``nonzero()`` (NonZero) does. Scheduler steps run eagerly, so PyNative only."""
    if self.custom_timesteps or self.num_inference_steps:
        index = (self.timesteps == timestep).nonzero()[0][0]
        if index == self.timesteps.shape[0] - 1:
            return ms.tensor(-1)
        return self.timesteps[index + 1]
    return timestep - 1


# ---------------------------------------------------------------------------------------------------------------------
# CPU speed of the attention (kernels that exist on CPU but are slow there). Measured with
# benchmarks/bench_train_step.py: at 516 tokens the Llama's attention scores dominate the training step, and
# MindSpore's CPU backend spends most of it in the softmax backward (expanded into Mul, ReduceSum over the last
# axis, broadcast Sub, Mul) and in one StridedSlice of the causal-mask table; the UNet's attention softmax
# (``mint.softmax``) has the same backward.
# ---------------------------------------------------------------------------------------------------------------------
class RowSoftmax(nn.Cell):
    """Softmax over the last axis whose backward sums the rows with a matrix product.

    Backward: ``dx = y * (dy - rowsum(y * dy))``, the formula of MindSpore's expanded softmax gradient, with the
    row sum a product with a ones column (a BLAS matrix-vector product) instead of the ReduceSum kernel, which
    is several times slower on CPU over long rows, and one broadcast operation instead of two.
    """

    def construct(self, x):
        return ops.softmax(x, -1)

    def bprop(self, x, out, dout):
        row_sum = ops.matmul(out * dout, ops.ones((x.shape[-1], 1), x.dtype))
        return (out * (dout - row_sum),)


_ROW_SOFTMAX = RowSoftmax()


def softmax(input, dim, *, dtype=None):
    """``mint.softmax`` (MindONE's attention probabilities); over the last axis by :class:`RowSoftmax`."""
    if dtype is not None:
        input = input.astype(dtype)
    if dim in (-1, input.ndim - 1):
        return _ROW_SOFTMAX(input)
    return ops.softmax(input, dim)


def _llama_attn(self, query, key, value, mask):
    """``LLamaAttention._attn`` (the attention without flash attention) with the same result, cheaper on CPU.

    query ``(b, heads, q_len, head_dim)``, key and value ``(b, heads, kv_len, head_dim)``, mask (additive)
    ``(b, 1, q_len, kv_len)``. The ``1/sqrt(head_dim)`` scale multiplies the query instead of the scores (a tensor
    ``kv_len / head_dim`` times smaller, in both passes) and the softmax is :class:`RowSoftmax`.
    """
    score = self.batch_matmul_q_k(self.mul(query, self.inv_norm_factor), key)
    score = self.add(mask, score)
    probs = _ROW_SOFTMAX(self.cast_attn(score, self.softmax_dtype))
    return self._merge_heads(self.batch_matmul(self.cast(probs, self.dtype), value))


class SliceFromOrigin(nn.Cell):
    """``StridedSlice`` for unit strides, on the ``Slice`` kernel (about 10x faster on CPU for a 512 x 512 table).

    Replaces MindFormers' causal-mask slice, ``slice(table, begin, end, (1, 1, ...))``.
    """

    def construct(self, x, begin, end, strides):
        return ops.slice(x, begin, tuple([e - b for b, e in zip(begin, end)]))


def install_llama_cpu_compat() -> bool:
    """Patch MindFormers' ``LLamaAttention._attn`` with :func:`_llama_attn` (recorded like the other patches).

    Separate from :func:`install_cpu_compat` because importing MindFormers costs seconds that the stages without a
    Llama should not pay: every Llama of the project is built by ``research.pmg.models.llama`` (``build_llama``)
    or the mini LLM trainer, and both call this first, so all Llamas of a process compute attention the same way.
    A no-op off CPU (flash attention and fused kernels there); idempotent. Returns whether it is active.
    """
    if ms.get_context("device_target") != "CPU":
        return False
    _patch("mindformers.models.llama.llama_transformer", "LLamaAttention._attn", _llama_attn)
    return True


def slice_causal_mask_cheaply(mask) -> bool:
    """Give MindFormers' causal mask of a built Llama (``model.casual_mask``) :class:`SliceFromOrigin` (the same
    values, a faster kernel). Only a mask sliced to shorter inputs (``research.pmg.models.llama.accept_shorter_inputs``)
    slices at all. A no-op off CPU. Returns whether the mask was changed.
    """
    if ms.get_context("device_target") != "CPU":
        return False
    mask.slice = SliceFromOrigin()
    return True


# (owner module path, attribute, replacement); the reason for each is in the replacement's docstring.
_MINT_PATCHES = (
    ("mindspore.mint.nn", "Conv2d", Conv2d),
    ("mindspore.mint.nn", "ConvTranspose2d", ConvTranspose2d),
    ("mindspore.mint.nn", "LayerNorm", LayerNorm),
    ("mindspore.mint.nn", "Embedding", Embedding),
    ("mindspore.mint.nn", "AvgPool2d", AvgPool2d),
    ("mindspore.mint.nn.functional", "conv2d", conv2d),
    ("mindspore.mint.nn.functional", "conv_transpose2d", conv_transpose2d),
    ("mindspore.mint.nn.functional", "layer_norm", layer_norm),
    ("mindspore.mint.nn.functional", "gelu", gelu),
    ("mindspore.mint.nn.functional", "embedding", embedding),
    ("mindspore.mint.nn.functional", "pad", pad),
    ("mindspore.mint.nn.functional", "avg_pool2d", avg_pool2d),
    ("mindspore.mint", "baddbmm", baddbmm),
    ("mindspore.mint", "norm", norm),
    ("mindspore.mint", "stack", stack),
    ("mindspore.mint", "split", split),
    ("mindspore.mint", "chunk", chunk),
    ("mindspore.mint", "arange", arange),
    ("mindspore.mint", "randn", randn),
    ("mindspore.mint", "softmax", softmax),  # has a CPU kernel; replaced for a cheaper backward (RowSoftmax)
)

# MindONE objects to patch; install imports their modules (MindONE is a dependency of the project, and these
# two modules import in well under a second).
_MINDONE_PATCHES = (
    ("mindone.diffusers.models.activations", "GEGLU.construct", _geglu_construct),
    ("mindone.diffusers.schedulers.scheduling_ddpm", "DDPMScheduler.previous_timestep", _ddpm_previous_timestep),
)


def _resolve(path: str):
    return sys.modules[path] if path in sys.modules else __import__(path, fromlist=["_"])


def _patch(owner_path: str, attr: str, replacement) -> None:
    owner = _resolve(owner_path)
    *parents, name = attr.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    key = f"{owner_path}:{attr}"
    if key not in _ORIGINALS:
        _ORIGINALS[key] = getattr(owner, name)
    setattr(owner, name, replacement)


def is_installed() -> bool:
    """True once :func:`install_cpu_compat` has patched this process."""
    return bool(_ORIGINALS)


def originals() -> dict[str, object]:
    """A copy of the patch record: ``"mindspore.mint.nn:Conv2d"`` (module:attribute) -> the replaced object."""
    return dict(_ORIGINALS)


def install_cpu_compat() -> bool:
    """Patch ``mindspore.mint`` (and the MindONE spots listed above) with CPU-capable equivalents.

    A no-op unless ``mindspore.get_context("device_target")`` is ``"CPU"``: on Ascend the native fused kernels
    stay. Idempotent: a second call changes nothing and the record keeps the true originals. Call it after the
    device is set and before MindONE models are built. Returns whether the CPU layer is active.
    """
    if ms.get_context("device_target") != "CPU":
        return False
    for owner_path, attr, replacement in _MINT_PATCHES + _MINDONE_PATCHES:
        _patch(owner_path, attr, replacement)
    return True
