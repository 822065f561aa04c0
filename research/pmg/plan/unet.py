"""The Stable Diffusion UNet and VAE walked layer by layer: parameters, FLOPs and activations, no framework.

:func:`unet_tally` follows diffusers' ``UNet2DConditionModel`` (MindONE's is the same module tree) for the block
types Stable Diffusion 1.x / 2.x use, and :func:`vae_tally` its ``AutoencoderKL``. Architectures are the
keyword-argument dicts of those classes with every default filled (:mod:`research.pmg.plan.arch`). The counting
conventions are :mod:`research.pmg.plan.tally`'s; ``tests/test_plan.py`` checks the parameter counts against
the PyTorch modules built on the meta device, the FLOPs against ``torch.utils.flop_counter`` and the kept
elements against the tensors PyTorch's autograd saves.

**Gradient path of a PMG training step.** The latents and timesteps need no gradient and every weight is
frozen: gradients only flow back to the context (the soft embedding) through the cross-attentions. The
feature map therefore joins the gradient path at the first cross-attention (``attn2`` of the first
transformer): everything before it (``conv_in``, the first ResNet, the first self-attention, the time
embedding) has no backward pass and keeps nothing, everything after it does. Skip connections taken before
that point rejoin the path where the up path concatenates them.

**UNet activation estimate, per sample** (compute dtype, ``C`` channels at ``N = h w`` pixels, ``M`` context
tokens, ``H`` heads), what each block keeps on the gradient path:

- ResNet block ``C_in -> C_out``: its input, GroupNorm and SiLU outputs (the next ops' inputs) twice:
  ``3 N (C_in + C_out)``;
- transformer (one ``BasicTransformerBlock``): GroupNorm input, ``proj_in`` and ``proj_out`` inputs ``3 C N``;
  self-attention: LayerNorm input, Q/K/V input, Q, K, V, output-projection input ``6 C N`` plus the scores
  ``H N^2`` without flash attention; cross-attention: ``4 C N + 2 C M`` plus ``H N M``; GEGLU feed-forward:
  LayerNorm input, projection input, its ``8 C`` output, GELU output and the product ``18 C N``;
- samplers: the convolution's input.

It is an estimate: it counts tensors, not the allocator's fragmentation or the backward pass's own transient
gradients (one block's worth), which the fixed framework reserve of the plan absorbs.
"""
from __future__ import annotations

from typing import Any

from research.pmg.plan.tally import Tally

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
CROSS_MID = "UNetMidBlock2DCrossAttn"


def _per_block(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_tally(arch: dict[str, Any], *, latent: int | None = None, context_tokens: int = 77, flash: bool = False,
               trainable: bool = False, weight_inputs: tuple[str, ...] = ("linear", "conv")) -> Tally:
    """Counts of one UNet pass over a ``latent x latent`` latent with ``context_tokens`` context tokens.

    ``arch``: the complete ``UNet2DConditionModel`` kwargs (:func:`research.pmg.plan.arch.unet_arch`);
    ``latent`` defaults to its ``sample_size``. Gradient path: PMG's (see the module docstring) unless
    ``trainable``; ``weight_inputs=()`` counts the frozen floor (:class:`~research.pmg.plan.tally.Tally`).
    """
    side = int(latent or arch["sample_size"])
    boc = list(arch["block_out_channels"])
    n = len(boc)
    if any(c % arch["norm_num_groups"] for c in boc):
        raise ValueError(f"block_out_channels {boc} not divisible by norm_num_groups {arch['norm_num_groups']}")
    heads = _per_block(arch["attention_head_dim"], n)  # diffusers' name; it is the number of heads
    layers = _per_block(arch["layers_per_block"], n)
    tlayers = _per_block(arch["transformer_layers_per_block"], n)
    ctx_dim = arch["cross_attention_dim"]
    ctx_dim = ctx_dim[0] if isinstance(ctx_dim, (list, tuple)) else ctx_dim
    temb = arch["time_embedding_dim"] or 4 * boc[0]
    linear_proj = bool(arch["use_linear_projection"])
    t = Tally(flash=flash, trainable=trainable, weight_inputs=weight_inputs)
    m = context_tokens
    state = {"grad": False}  # does the feature map require a gradient yet

    def resnet(cin: int, cout: int, hw: int) -> None:
        g = state["grad"]
        with t.block("resnet", cin * hw):
            t.norm(cin * hw, cin, grad=g)
            t.elementwise(cin * hw, grad=g)  # SiLU keeps the norm output
            t.conv(cin, cout, 3, hw, hw, grad=g)  # keeps the SiLU output
            t.elementwise(temb, grad=False, keep=False)  # SiLU of the time embedding, kept once in the stem
            t.linear(1, temb, cout, grad=False)  # time_emb_proj
            t.norm(cout * hw, cout, grad=g)
            t.elementwise(cout * hw, grad=g)
            t.conv(cout, cout, 3, hw, hw, grad=g)
            if cin != cout:  # 1x1 shortcut; its input is the block input, kept above
                t.conv(cin, cout, 1, hw, hw, grad=g, keep_input=False)

    def transformer(c: int, hw: int, n_heads: int, n_layers: int) -> None:
        g = state["grad"]
        with t.block("transformer", c * hw):
            t.norm(c * hw, c, grad=g)  # GroupNorm
            if linear_proj:
                t.linear(hw, c, c, grad=g)
            else:
                t.conv(c, c, 1, hw, hw, grad=g)
            for _ in range(n_layers):
                g = state["grad"]
                t.norm(c * hw, c, grad=g)  # LayerNorm 1 -> self-attention
                t.linear(hw, c, c, grad=g, bias=False)  # to_q (keeps the norm output for q, k, v)
                t.linear(hw, c, c, grad=g, bias=False, keep_input=False)
                t.linear(hw, c, c, grad=g, bias=False, keep_input=False)
                t.attention(n_heads, hw, hw, c, grad_q=g, grad_kv=g)
                t.linear(hw, c, c, grad=g)  # to_out
                t.norm(c * hw, c, grad=g)  # LayerNorm 2 -> cross-attention on the context
                t.linear(hw, c, c, grad=g, bias=False)
                t.linear(m, ctx_dim, c, grad=True, bias=False, keep_input=False)  # to_k, to_v read the context,
                t.linear(m, ctx_dim, c, grad=True, bias=False, keep_input=False)  # kept once for the network
                t.attention(n_heads, hw, m, c, grad_q=g, grad_kv=True)
                t.linear(hw, c, c, grad=True)
                state["grad"] = g = True
                t.norm(c * hw, c, grad=g)  # LayerNorm 3 -> GEGLU feed-forward
                t.linear(hw, c, 8 * c, grad=g)
                t.elementwise(8 * c * hw, grad=g)  # GELU(gate) and gate * hidden keep the projection output
                t.elementwise(4 * c * hw, grad=g)  # the product keeps the GELU output
                t.linear(hw, 4 * c, c, grad=g)
            if linear_proj:
                t.linear(hw, c, c, grad=g)
            else:
                t.conv(c, c, 1, hw, hw, grad=g)

    # Stem: time embedding and conv_in.
    with t.block("stem", arch["in_channels"] * side * side):
        t.linear(1, boc[0], temb, grad=False)  # keeps the sinusoidal embedding (trainable only)
        t.elementwise(temb, grad=False)
        t.linear(1, temb, temb, grad=False)
        t.elementwise(temb, grad=False)  # the embedding every ResNet's SiLU reads (one tensor)
        k = arch["conv_in_kernel"]
        t.conv(arch["in_channels"], boc[0], k, side * side, side * side, grad=False)
    mid = arch["mid_block_type"]
    has_cross = CROSS_DOWN in arch["down_block_types"] or CROSS_UP in arch["up_block_types"] or mid == CROSS_MID
    if has_cross and "linear" in weight_inputs:
        t.inputs_kept = m * ctx_dim  # the context, read by every cross-attention's to_k and to_v

    skips: list[tuple[int, int]] = []  # (channels, side) of each skip connection

    def push(c: int, s: int) -> None:
        skips.append((c, s))
        t.held += c * s * s

    push(boc[0], side)
    s, cout = side, boc[0]
    for i, kind in enumerate(arch["down_block_types"]):
        if kind not in (CROSS_DOWN, PLAIN_DOWN):
            raise ValueError(f"down block type {kind!r} is not modelled (only {CROSS_DOWN}, {PLAIN_DOWN})")
        cin, cout = cout, boc[i]
        for j in range(layers[i]):
            resnet(cin if j == 0 else cout, cout, s * s)
            if kind == CROSS_DOWN:
                transformer(cout, s * s, heads[i], tlayers[i])
            push(cout, s)
        if i < n - 1:
            s_out = (s + 1) // 2
            with t.block("downsample", cout * s * s):
                t.conv(cout, cout, 3, s * s, s_out * s_out, grad=state["grad"])
            s = s_out
            push(cout, s)

    if mid not in (CROSS_MID, None):
        raise ValueError(f"mid block type {mid!r} is not modelled (only {CROSS_MID} or none)")
    if mid == CROSS_MID:
        c = boc[-1]
        resnet(c, c, s * s)
        transformer(c, s * s, heads[-1], tlayers[-1])  # UNet2DConditionModel builds it with one layer
        resnet(c, c, s * s)

    rboc, rheads, rlayers, rtl = boc[::-1], heads[::-1], layers[::-1], tlayers[::-1]
    out_c = rboc[0]
    for i, kind in enumerate(arch["up_block_types"]):
        if kind not in (CROSS_UP, PLAIN_UP):
            raise ValueError(f"up block type {kind!r} is not modelled (only {CROSS_UP}, {PLAIN_UP})")
        prev_c, out_c = out_c, rboc[i]
        in_c = rboc[min(i + 1, n - 1)]
        nl = rlayers[i] + 1
        for j in range(nl):
            skip_c, skip_s = skips.pop()
            t.held -= skip_c * skip_s * skip_s
            expected = in_c if j == nl - 1 else out_c
            if skip_c != expected:
                raise ValueError(f"up block {i}: skip connection has {skip_c} channels, the block expects {expected}")
            s = skip_s
            resnet((prev_c if j == 0 else out_c) + skip_c, out_c, s * s)
            if kind == CROSS_UP:
                transformer(out_c, s * s, rheads[i], rtl[i])
        if i < n - 1:
            s_up = skips[-1][1] if skips else 2 * s
            with t.block("upsample", out_c * s * s):
                # nearest x2, then a 3x3 convolution that keeps its up-sampled input
                t.conv(out_c, out_c, 3, s_up * s_up, s_up * s_up, grad=state["grad"])
            s = s_up

    with t.block("out", boc[0] * s * s):
        g = state["grad"]
        t.norm(boc[0] * s * s, boc[0], grad=g)
        t.elementwise(boc[0] * s * s, grad=g)
        t.conv(boc[0], arch["out_channels"], arch["conv_out_kernel"], s * s, s * s, grad=g)
    return t


def vae_tally(arch: dict[str, Any], *, size: int | None = None, part: str = "decoder") -> Tally:
    """Counts of the VAE at ``size x size`` pixels (default ``sample_size``): ``part`` is ``"decoder"`` (latents
    to an image: ``post_quant_conv`` + decoder) or ``"encoder"`` (image to moments: encoder + ``quant_conv``).
    Parameters of the whole ``AutoencoderKL`` are ``vae_params``. Inference only (nothing kept)."""
    side = int(size or arch["sample_size"])
    boc = list(arch["block_out_channels"])
    n = len(boc)
    lat = arch["latent_channels"]
    lpb = arch["layers_per_block"]
    t = Tally()

    def resnet(cin: int, cout: int, hw: int) -> None:
        with t.block("resnet", cin * hw):
            t.norm(cin * hw, cin, grad=False)
            t.elementwise(cin * hw, grad=False)
            t.conv(cin, cout, 3, hw, hw, grad=False)
            t.norm(cout * hw, cout, grad=False)
            t.elementwise(cout * hw, grad=False)
            t.conv(cout, cout, 3, hw, hw, grad=False)
            if cin != cout:
                t.conv(cin, cout, 1, hw, hw, grad=False, keep_input=False)

    def attention(c: int, hw: int) -> None:  # Attention(c, heads=1, dim_head=c, bias, group norm, residual)
        with t.block("attention", c * hw):
            t.norm(c * hw, c, grad=False)
            for _ in range(3):
                t.linear(hw, c, c, grad=False)
            t.attention(1, hw, hw, c, grad_q=False, grad_kv=False)
            t.linear(hw, c, c, grad=False)

    def mid(c: int, hw: int) -> None:
        resnet(c, c, hw)
        if arch["mid_block_add_attention"]:
            attention(c, hw)
        resnet(c, c, hw)

    if part == "encoder":
        s = side
        with t.block("stem", arch["in_channels"] * s * s):
            t.conv(arch["in_channels"], boc[0], 3, s * s, s * s, grad=False)
        cout = boc[0]
        for i in range(n):
            cin, cout = cout, boc[i]
            for j in range(lpb):
                resnet(cin if j == 0 else cout, cout, s * s)
            if i < n - 1:
                s_out = s // 2  # padding (0, 1, 0, 1), stride 2
                with t.block("downsample", cout * s * s):
                    t.conv(cout, cout, 3, s * s, s_out * s_out, grad=False)
                s = s_out
        mid(boc[-1], s * s)
        with t.block("out", boc[-1] * s * s):
            t.norm(boc[-1] * s * s, boc[-1], grad=False)
            t.conv(boc[-1], 2 * lat, 3, s * s, s * s, grad=False)
            if arch["use_quant_conv"]:
                t.conv(2 * lat, 2 * lat, 1, s * s, s * s, grad=False)
        return t
    if part != "decoder":
        raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
    s = side // 2 ** (n - 1)
    with t.block("stem", lat * s * s):
        if arch["use_post_quant_conv"]:
            t.conv(lat, lat, 1, s * s, s * s, grad=False)
        t.conv(lat, boc[-1], 3, s * s, s * s, grad=False)
    mid(boc[-1], s * s)
    rboc = boc[::-1]
    out_c = rboc[0]
    for i in range(n):
        prev_c, out_c = out_c, rboc[i]
        for j in range(lpb + 1):
            resnet(prev_c if j == 0 else out_c, out_c, s * s)
        if i < n - 1:
            with t.block("upsample", out_c * s * s):
                t.conv(out_c, out_c, 3, 4 * s * s, 4 * s * s, grad=False)
            s *= 2
    with t.block("out", boc[0] * s * s):
        t.norm(boc[0] * s * s, boc[0], grad=False)
        t.conv(boc[0], arch["out_channels"], 3, s * s, s * s, grad=False)
    return t


def vae_params(arch: dict[str, Any]) -> int:
    """Parameters of the whole ``AutoencoderKL`` (encoder, decoder, quant convolutions)."""
    return vae_tally(arch, part="encoder").params + vae_tally(arch, part="decoder").params
