"""Counting primitives for a network walked layer by layer: parameters, FLOPs and activation elements.

The UNet, VAE and CLIP walks (:mod:`research.pmg.plan.unet`, :mod:`research.pmg.plan.clip`) call these for
every layer, in the order the diffusers / transformers modules run them, so one description of a network gives
all of its counts. Every count is per sample (batch 1); callers multiply by the rows of a call.

Conventions, the same for every model of the plan:

- **FLOPs**: 2 per multiply-add, in matmuls, convolutions and attention only (norms, activations, additions and
  up-sampling are left out, as ``torch.utils.flop_counter`` leaves them out); biases are not counted.
- **Backward FLOPs** (frozen weights): only the gradients with respect to data inputs that require one. A linear
  or convolution costs its forward again for ``dX``; an attention product ``A @ B`` costs its forward once per
  operand that needs a gradient.
- **Kept elements**: what the backward pass keeps from the forward. Every op on the gradient path (some input
  requires a gradient) keeps the inputs its backward reads, a linear or convolution's input included: that is
  Korthikanti et al. 2022's convention (*Reducing Activation Recomputation in Large Transformer Models*), exact
  when weights train and an upper bound for PMG's frozen ones, whose backward only needs them for weight
  gradients. A tensor read by several ops is counted once. Ops off the gradient path keep nothing. The floor
  for frozen weights leaves the linear and convolution inputs out (``weight_inputs=()``).
- **Live elements** (inference): the largest ``held + block input + op input + op output (+ attention scores)``
  over all ops, where ``held`` are the skip connections waiting for the UNet's up path. A rough bound on the
  working set when nothing is kept for a backward pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Block:
    """One recompute unit (a ResNet block, a transformer, a sampler, the stem): its input and what it keeps."""

    name: str
    input: int  # elements of the block's input: all that recompute keeps of it
    kept: int = 0  # elements kept for the backward inside the block, without recompute
    on_path: bool = False  # some op of the block is on the gradient path


@dataclass
class Tally:
    """Running counts over one network.

    ``flash``: attention keeps no score matrix (fused flash attention); otherwise each attention keeps its
    probabilities ``(heads, n_q, n_kv)``. ``trainable``: count kept elements as if every weight trained (every
    op is then on the gradient path): the setting of the PyTorch parity tests. ``weight_inputs=()``: the floor
    for frozen weights, where linear layers and convolutions keep nothing (their backward to the input reads
    only the weight).
    """

    flash: bool = False
    trainable: bool = False
    # layer kinds that keep their input: both in Korthikanti's count, none in the floor for frozen weights
    weight_inputs: tuple[str, ...] = ("linear", "conv")
    params: int = 0
    flops: int = 0  # forward
    grad_flops: int = 0  # backward to the data inputs, weights frozen
    inputs_kept: int = 0  # network inputs the backward reads (the UNet's context): outside every block
    peak_live: int = 0  # inference working set, elements
    held: int = 0  # skip connections alive now (inference)
    blocks: list[Block] = field(default_factory=list)

    # -- blocks --------------------------------------------------------------------------------------------------
    @contextmanager
    def block(self, name: str, input_elems: int):
        self.blocks.append(Block(name, input_elems))
        yield self.blocks[-1]

    def _keep(self, elems: int, on_path: bool) -> None:
        if on_path or self.trainable:
            blk = self.blocks[-1]
            blk.kept += elems
            blk.on_path = True

    def _live(self, elems: int) -> None:
        self.peak_live = max(self.peak_live, self.held + self.blocks[-1].input + elems)

    # -- layers --------------------------------------------------------------------------------------------------
    def conv(self, cin: int, cout: int, k: int, hw_in: int, hw_out: int, *, grad: bool, bias: bool = True,
             keep_input: bool = True) -> None:
        """A ``k x k`` convolution from ``cin`` channels at ``hw_in`` pixels to ``cout`` at ``hw_out``."""
        self.params += cin * cout * k * k + (cout if bias else 0)
        flops = 2 * cin * cout * k * k * hw_out
        self.flops += flops
        self.grad_flops += flops if grad else 0
        if keep_input and "conv" in self.weight_inputs:
            self._keep(cin * hw_in, grad)
        self._live(cin * hw_in + cout * hw_out)

    def linear(self, n: int, fin: int, fout: int, *, grad: bool, bias: bool = True, keep_input: bool = True) -> None:
        """A linear layer over ``n`` tokens (or pixels) from ``fin`` to ``fout`` features."""
        self.params += fin * fout + (fout if bias else 0)
        flops = 2 * n * fin * fout
        self.flops += flops
        self.grad_flops += flops if grad else 0
        if keep_input and "linear" in self.weight_inputs:
            self._keep(n * fin, grad)
        self._live(n * (fin + fout))

    def norm(self, elems: int, channels: int, *, grad: bool) -> None:
        """GroupNorm / LayerNorm with an affine ``(channels,)`` scale and shift; keeps its input."""
        self.params += 2 * channels
        self._keep(elems, grad)
        self._live(2 * elems)

    def elementwise(self, elems: int, *, grad: bool, keep: bool = True) -> None:
        """An activation (SiLU, GELU) or product that keeps an input of ``elems`` for its backward."""
        if keep:
            self._keep(elems, grad)
        self._live(2 * elems)

    def attention(self, heads: int, n_q: int, n_kv: int, dim: int, *, grad_q: bool, grad_kv: bool) -> None:
        """``softmax(Q K^T / sqrt(d)) V`` for ``heads`` heads of total width ``dim``.

        Q is ``(n_q, dim)``, K and V ``(n_kv, dim)``. Keeps Q, K and V (each product's backward reads the
        other operand) and, without flash attention, the probabilities ``(heads, n_q, n_kv)``.
        """
        product = 2 * n_q * n_kv * dim  # Q K^T, and again P V
        self.flops += 2 * product
        # dQ = dS K needs Q's gradient; dK = dS^T Q and dV = P^T dO need K's and V's; dP = dO V^T whenever
        # P depends on something that requires a gradient.
        self.grad_flops += product * (int(grad_q) + int(grad_kv) + int(grad_q or grad_kv) + int(grad_kv))
        scores = 0 if self.flash else heads * n_q * n_kv
        self._keep(n_q * dim + 2 * n_kv * dim + scores, grad_q or grad_kv)
        self._live(n_q * dim + 2 * n_kv * dim + 2 * scores + n_q * dim)

    # -- totals --------------------------------------------------------------------------------------------------
    @property
    def kept(self) -> int:
        """Elements kept for the backward pass without recompute."""
        return self.inputs_kept + sum(b.kept for b in self.blocks)

    @property
    def kept_recompute(self) -> int:
        """With recompute: each block on the gradient path keeps only its input, plus one block's own set while
        it is recomputed for its backward (the largest)."""
        path = [b for b in self.blocks if b.on_path]
        if not path:
            return self.inputs_kept
        return self.inputs_kept + sum(b.input for b in path) + max(b.kept for b in path)
