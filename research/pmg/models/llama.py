"""The LLM of PMG: MindFormers Llama 2, and the P-Tuning v2 prefix encoder of the bias-correction LLM."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

from research.pmg.compat.mint_cpu import install_llama_cpu_compat, slice_causal_mask_cheaply
from research.pmg.config import LlamaConfig, SoftPreferenceConfig
from research.pmg.models.weights import load_checkpoint_into
from research.pmg.runtime import Runtime

_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


KV_BLOCK_SIZE = 16  # tokens per block of MindFormers' paged KV cache (its default)


def kv_cache_blocks(batch_size: int, seq_length: int, configured: int = 0) -> int:
    """Blocks the paged KV cache needs so every row of a batch can reach ``seq_length`` tokens.

    MindFormers' ``BlockTables.init_cache_engine`` refuses a batch when ``batch * seq_length // block_size``
    exceeds the pool, and its default pool (512 blocks) holds only 8 rows of 1024 tokens. ``configured`` > 0
    (``keywords.kv_cache_blocks``) is taken as it is.
    """
    return configured or -(-batch_size * seq_length // KV_BLOCK_SIZE)


def llama_config(cfg: LlamaConfig, runtime: Runtime, *, batch_size: int = 1, use_past: bool = False,
                 kv_blocks: int = 0, recompute: bool = False):
    """The MindFormers ``LlamaConfig`` for ``cfg`` on this runtime.

    On CPU the Ascend-only kernels (fused RMSNorm) are off, RoPE uses the slice path (the default path hits a
    BatchMatMul broadcast error on CPU) and everything is fp32. On Ascend the frozen weights and compute use
    ``runtime.precision``; norms, softmax and RoPE stay fp32. Flash attention follows ``runtime.flash_attention``
    (a model with a P-Tuning v2 prefix needs :func:`fit_flash_attention_to_prefix` after it is built).
    ``recompute`` makes MindFormers recompute each decoder layer in the backward pass (its ``LayerSetting``):
    only a layer's input is kept between the passes.
    """
    from mindformers import LlamaConfig as MFLlamaConfig
    from mindformers.modules.transformer.transformer import TransformerOpParallelConfig, TransformerRecomputeConfig

    on_ascend = runtime.device == "Ascend"
    dtype = _DTYPE_NAMES[runtime.precision]
    parallel = TransformerOpParallelConfig(recompute=TransformerRecomputeConfig(recompute=recompute))
    return MFLlamaConfig(
        batch_size=batch_size, seq_length=cfg.seq_length, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, n_kv_heads=cfg.n_kv_heads or None, intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size, multiple_of=cfg.multiple_of, rms_norm_eps=cfg.rms_norm_eps, theta=cfg.rope_theta,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        compute_dtype=dtype, param_init_type=dtype, layernorm_compute_type="float32",
        softmax_compute_type="float32", rotary_dtype="float32",
        use_flash_attention=runtime.flash_attention, fused_rms_norm=on_ascend, use_rope_slice=not on_ascend,
        use_past=use_past, block_size=KV_BLOCK_SIZE,
        num_blocks=kv_cache_blocks(batch_size, cfg.seq_length, kv_blocks),
        parallel_config=parallel,
        checkpoint_name_or_path="",  # a model *name* here would download: weights load below
    )


def build_llama(cfg: LlamaConfig, runtime: Runtime, *, batch_size: int = 1, use_past: bool = False,
                kv_blocks: int = 0, recompute: bool = False) -> nn.Cell:
    """A frozen MindFormers ``LlamaForCausalLM``; weights from ``cfg.checkpoint`` or random (tiny models only).

    Inputs are ``(batch, seq_length)`` int32 ids, padded with ``pad_token_id`` (masked as keys).
    """
    from mindformers import LlamaForCausalLM

    install_llama_cpu_compat()
    config = llama_config(cfg, runtime, batch_size=batch_size, use_past=use_past, kv_blocks=kv_blocks,
                          recompute=recompute)
    if runtime.device == "CPU":
        # MindFormers switches lazy_inline on whenever the parallel mode is not stand-alone (msrun workers),
        # and the CPU backend cannot compile the result ("Input[0] must be a Primitive ValueNode"). It reads
        # the switch only from a `config=` keyword argument.
        config.disable_lazy_inline = True
    model = LlamaForCausalLM(config=config)
    if cfg.checkpoint:
        # With use_past the model also has KV-cache parameters, which no checkpoint holds.
        caches = tuple(f"model.layers.{i}.attention.infer_attention.paged_attention_mgr."
                       for i in range(cfg.num_layers)) if use_past else ()
        load_checkpoint_into(model, cfg.checkpoint, what="models.llm", allow_missing=caches)
    freeze(model)
    return model


def fit_flash_attention_to_prefix(llama: nn.Cell, prefix_len: int) -> int:
    """Let every query see the ``prefix_len`` P-Tuning v2 keys that MindFormers puts in front of its own keys.

    MindFormers builds ``FlashAttentionScore(sparse_mode=0, pre_tokens=2**31-1, next_tokens=0)`` and, with a
    prefix, concatenates S prefix keys before the sequence keys and S always-visible columns before its causal
    mask. In sparse_mode 0 the kernel computes only the band ``i - pre_tokens <= j <= i + next_tokens`` counted
    from the top-left corner, and the mask on top of it; with ``next_tokens = 0`` query i keeps only keys 0..i:
    for i < S part of the prefix and none of its own tokens, after that the prefix and only the first i - S + 1
    of its i + 1 tokens. ``next_tokens = S`` puts the band's edge on the mask's diagonal, so the mask alone decides (whichever corner the band is counted
    from: the mask hides everything a wider band adds) and the kernel still skips the blocks above it.
    Returns the number of attention layers changed (0 without flash attention).
    """
    changed = 0
    for layer in getattr(getattr(llama, "model", None), "layers", ()):
        attention = layer.attention
        if not getattr(attention, "use_flash_attention", False):
            continue
        old = attention.flash_attention
        prim = old.flash_attention
        attention.flash_attention = type(old)(
            head_num=prim.head_num, keep_prob=prim.keep_prob, scale_value=prim.scale_value,
            pre_tokens=prim.pre_tokens, next_tokens=prefix_len, input_layout=old.input_layout,
            sparse_mode=old.sparse_mode, use_attention_mask=old.use_attention_mask,
            use_alibi_mask=old.use_alibi_mask, use_mqa=old.use_mqa, use_ring_attention=old.use_ring_attention,
            use_3d_tensor_parallel=old.use_3d_tensor_parallel, use_actual_seqlen=old.use_actual_seqlen,
            tp_x=old.tp_x, tp_y=old.tp_y, tp_z=old.tp_z)
        changed += 1
    return changed


def accept_shorter_inputs(llama: nn.Cell) -> bool:
    """Let a built Llama run sequences shorter than its ``seq_length`` (the length buckets of the soft preference).

    Rotary frequencies are already sliced to the input's length; MindFormers' causal mask is sliced only when the
    model was built in PyNative or dynamic-shape mode, and otherwise stays ``seq_length`` square. The flag it reads
    is a Python constant at compile time, so each input length still compiles to one static graph of its own.
    Returns whether there was a mask to change (a stand-in without a MindFormers model has none).
    """
    mask = getattr(getattr(llama, "model", None), "casual_mask", None)
    if mask is not None:
        mask.is_pynative = True
        slice_causal_mask_cheaply(mask)
    return mask is not None


def build_prefix_encoder(llm: LlamaConfig, soft: SoftPreferenceConfig, parallel_config=None) -> nn.Cell:
    """The trainable P-Tuning v2 prefix: ``prefix_len`` key/value vectors for every layer.

    Calling it as ``encoder(batch, dtype)`` returns ``num_layers`` tensors of shape
    ``(2, batch, prefix_len, n_kv_heads * head_dim)``, the ``prefix_keys_values`` argument of
    ``LlamaModel``. Built with the key/value head count (MindFormers' own helper uses the query head
    count, which is wrong for grouped-query attention). Parameters are fp32 master weights on every
    device; the output is cast to the compute dtype by the caller's ``dtype``.
    """
    from mindformers.modules.transformer.transformer import default_transformer_config
    from mindformers.pet.tuners.ptuning2_adapter import Ptuning2Encoder

    encoder = Ptuning2Encoder(
        pre_seq_len=soft.prefix_len, num_layers=llm.num_layers, num_heads=llm.n_kv_heads or llm.num_heads,
        kv_channels=llm.hidden_size // llm.num_heads, prefix_projection=soft.prefix_projection,
        projection_dim=soft.projection_dim, dropout_prob=soft.dropout,
        parallel_config=parallel_config or default_transformer_config,
    )
    for param in encoder.get_parameters():
        if param.dtype in (ms.float16, ms.bfloat16):  # MindFormers creates them fp16
            param.set_dtype(ms.float32)
    return encoder


def freeze(cell: nn.Cell) -> nn.Cell:
    """Mark every parameter of ``cell`` as not trainable (PMG trains only the soft-preference parts)."""
    for param in cell.get_parameters():
        param.requires_grad = False
    return cell
