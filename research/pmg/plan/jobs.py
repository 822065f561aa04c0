"""The plan of one config: memory per NPU of each job (training, keyword extraction, generation) and its time.

Each job's memory is the sum of what it holds on one NPU at its peak, plus a fixed framework reserve:

- **weights** of the frozen models the job builds, in the runtime precision (2 bytes in bf16/fp16, 4 in fp32);
- **trainable state** (training): the soft-preference parameters in fp32, their fp32 gradients, AdamW's two fp32
  moments, and an fp32 accumulation buffer when ``train.grad_accum_steps > 1``: 16 or 20 bytes per parameter;
- **activations**: for training what one micro-batch's backward pass keeps (:mod:`research.pmg.plan.llama`,
  :mod:`research.pmg.plan.unet`); for inference the largest working set of any one call (the stages run one
  after another), an estimate;
- **KV cache** (keyword extraction with ``keywords.use_past``): the paged cache's blocks;
- **reserve**: the CANN runtime, HCCL buffers and operator workspace, a fixed assumption (``--reserve-gb``).

Data parallelism does not change a worker's memory (every NPU holds every model); ``--nproc`` only divides
the work. Time is FLOPs / (peak x MFU), both stated assumptions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from research.pmg.config import ConfigError, PMGConfig
from research.pmg.errors import PMGError
from research.pmg.plan import llama
from research.pmg.plan.arch import clip_arch, diffusion_archs
from research.pmg.plan.clip import clip_model_params, text_tally, vision_tally
from research.pmg.plan.unet import unet_tally, vae_params, vae_tally
from research.pmg.runtime import resolve_flash_attention, resolve_precision

GB = 2 ** 30  # "GB" in the plan is GiB: NPU memory is sized in powers of two (a 64 GB 910B has 64 GiB)
TRAINABLE_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW's two fp32 moments
ACCUM_BYTES = 4  # fp32 gradient accumulation buffer (grad_accum_steps > 1)


@dataclass(frozen=True)
class Chip:
    """An Ascend NPU as the plan sees it: dense 16-bit peak and card memory sizes. What precision and flash
    attention it gets is the runtime's rule for its MindSpore chip name (research.pmg.runtime.CHIPS)."""

    name: str
    peak_tflops: float
    soc: str  # MindSpore's name for it (MSContext.get_ascend_soc_version)
    memory_gb: tuple[int, ...]


CHIPS = {
    # 910B: bf16 dense peak ~313 TFLOPS (910B3 class; other bins 280-376), 64 GB HBM, and 32 GB variants.
    "910B": Chip("Ascend 910B", 313.0, "ascend910b", (32, 64)),
    # 910A: fp16 dense peak ~256 TFLOPS (it has no bf16 and no fused flash attention), 32 GB HBM.
    "910A": Chip("Ascend 910A", 256.0, "ascend910", (32,)),
}


@dataclass
class Assumptions:
    chip: Chip
    nproc: int = 1
    mfu: float = 0.30
    reserve_gb: float = 2.0
    peak_tflops: float = 0.0  # 0 = the chip's
    memory_gb: tuple[float, ...] = ()  # () = the chip's card sizes

    def __post_init__(self) -> None:
        self.peak_tflops = self.peak_tflops or self.chip.peak_tflops
        self.memory_gb = tuple(self.memory_gb or self.chip.memory_gb)


@dataclass
class Model:
    name: str
    source: str
    params: int
    bytes: int


@dataclass
class Job:
    """One job's memory on one NPU (bytes) and its verdict per card size (headroom in GB, negative = short)."""

    name: str
    detail: str
    weights: int
    trainable: int
    activations: int
    kv_cache: int
    reserve: int
    parts: dict[str, int] = field(default_factory=dict)  # activations by model
    activations_floor: int = 0  # training: what input gradients alone need with frozen weights (a lower bound)
    headroom_gb: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.kv_cache + self.reserve


@dataclass
class Work:
    """FLOPs of one unit of work (a training / generated / keyword sample) and the rate they imply per NPU."""

    name: str
    detail: str
    flops: float
    parts: dict[str, float]
    samples_per_s: float = 0.0


@dataclass
class Plan:
    source: str
    assumptions: Assumptions
    precision: str
    dtype_bytes: int
    flash: bool
    models: list[Model]
    soft_params: dict[str, int]
    jobs: list[Job]
    work: list[Work]
    run: dict[str, Any]  # the training run: steps, samples, hours
    notes: list[str]


def make_plan(cfg: PMGConfig, assumptions: Assumptions) -> Plan:
    """Count everything for ``cfg`` on ``assumptions.chip``; reads only the config and model ``config.json`` files.

    Raises :class:`ConfigError` for an architecture the counts cannot follow.
    """
    try:
        return _make_plan(cfg, assumptions)
    except ValueError as exc:  # the layer walks' own checks; PMG errors already name their source
        if isinstance(exc, PMGError):
            raise
        raise ConfigError(f"{cfg.source}: models: {exc}") from None


def _make_plan(cfg: PMGConfig, assumptions: Assumptions) -> Plan:
    a = assumptions
    rt, llm, soft = cfg.runtime, cfg.models.llm, cfg.models.soft_preference
    device = "CPU" if rt.device == "CPU" else "Ascend"  # auto: the plan is for the chip it was asked about
    precision = resolve_precision(rt.precision, device, a.chip.soc)
    nbytes = 4 if precision == "fp32" else 2
    flash = resolve_flash_attention(rt.flash_attention, device, a.chip.soc)
    notes = []

    sd = diffusion_archs(cfg.models.diffusion, cfg.source)
    unet, vae, text = sd["unet"].fields, sd["vae"].fields, sd["text_encoder"].fields
    clip = clip_arch(cfg.models.clip, cfg.source)
    if unet["sample_size"] is None:
        raise ConfigError(f"{sd['unet'].where}: field 'sample_size' must be set (the latent side the UNet runs at)")
    ctx_dim = unet["cross_attention_dim"]
    ctx_dim = ctx_dim[0] if isinstance(ctx_dim, (list, tuple)) else ctx_dim
    vae_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    latent = int(unet["sample_size"])
    gen_size = cfg.generate.size or latent * vae_factor
    gen_latent = gen_size // vae_factor
    text_len = cfg.models.diffusion.tokenizer_max_length

    # -- weights ---------------------------------------------------------------------------------------------------
    llm_params = sum(llama.llama_params(llm).values())
    params = {
        "llm": ("Llama (frozen)", "models.llm", llm_params),
        "unet": ("SD UNet", sd["unet"].source, unet_tally(unet).params),
        "vae": ("SD VAE", sd["vae"].source, vae_params(vae)),
        "text_encoder": ("SD text encoder (CLIP text)", sd["text_encoder"].source, text_tally(text).params),
        "clip": ("CLIP scorer", clip.source, clip_model_params(clip)),
    }
    models = {key: Model(name, source, n, n * nbytes) for key, (name, source, n) in params.items()}
    soft_params = llama.soft_preference_params(llm, soft, ctx_dim)
    n_soft = sum(soft_params.values())
    reserve = int(a.reserve_gb * GB)

    # -- training --------------------------------------------------------------------------------------------------
    tr = cfg.train
    b, s = tr.batch_size, llm.seq_length
    keys = s + soft.prefix_len  # the prefix's keys and values precede the sequence in every layer
    unet_rows = b * (2 if tr.negative_weight > 0 else 1)  # the negative-item term denoises a second image
    train_ctx = (2 if tr.conditioning == "full" else 1) * text_len + soft.num_mm_tokens
    train_unet = unet_tally(unet, latent=latent, context_tokens=train_ctx, flash=flash)
    unet_floor = unet_tally(unet, latent=latent, context_tokens=train_ctx, flash=flash, weight_inputs=())
    trainable = n_soft * (TRAINABLE_BYTES + (ACCUM_BYTES if tr.grad_accum_steps > 1 else 0))
    train_weights = sum(models[k].bytes for k in ("llm", "unet", "vae", "text_encoder"))
    jobs = []
    for recompute in (False, True):
        llm_act, llm_floor = (llama.activation_bytes(llm, s, b, keys, dtype_bytes=nbytes, flash=flash,
                                                     recompute=recompute, frozen=frozen) for frozen in (False, True))
        unet_act, unet_min = ((t.kept_recompute if recompute else t.kept) * unet_rows * nbytes
                              for t in (train_unet, unet_floor))
        chosen = " (the config's)" if recompute == tr.recompute else ""
        jobs.append(Job(
            f"train, recompute {'on' if recompute else 'off'}{chosen}",
            f"batch {b}, {s} tokens + prefix {soft.prefix_len}, {latent}x{latent} latents x {unet_rows} rows, "
            f"context {train_ctx} tokens",
            train_weights, trainable, llm_act + unet_act, 0, reserve, {"llm": llm_act, "unet": unet_act},
            activations_floor=llm_floor + unet_min))

    # -- keyword extraction ----------------------------------------------------------------------------------------
    kw = cfg.keywords
    kb = kw.batch_size
    blocks = llama.kv_cache_blocks(llm, kb, kw.kv_cache_blocks) if kw.use_past else 0
    kv_bytes = llama.kv_cache_bytes(llm, blocks, nbytes)
    # Inference keeps nothing between layers: the working set is about one layer's tensors (bounded by what
    # training would keep of it) plus the fp32 logits of the last positions.
    prefill = llama.layer_activation_bytes(llm, s, kb, dtype_bytes=nbytes, flash=flash) + kb * llm.vocab_size * 4
    jobs.append(Job("keywords", f"batch {kb} x {s} tokens, KV cache {blocks} blocks x {llama.KV_BLOCK_SIZE} tokens"
                    if kw.use_past else f"batch {kb} x {s} tokens, no KV cache (keywords.use_past false)",
                    models["llm"].bytes, 0, prefill, kv_bytes, reserve, {"llm": prefill}))

    # -- generation ------------------------------------------------------------------------------------------------
    g = cfg.generate
    candidates = g.num_candidates
    gen_ctx = text_len * (2 if g.preference_keywords else 1) + soft.num_mm_tokens
    rows = g.micro_batch
    gen_unet = unet_tally(unet, latent=gen_latent, context_tokens=gen_ctx, flash=flash)
    decoder = vae_tally(vae, size=gen_size, part="decoder")
    vision = vision_tally(clip.vision, projection_dim=clip.projection_dim)
    gen_parts = {
        "unet": gen_unet.peak_live * 2 * rows * nbytes,  # guidance: conditional and unconditional rows
        "vae": decoder.peak_live * rows * nbytes,
        "llm": llama.layer_activation_bytes(llm, s, 1, keys, dtype_bytes=nbytes, flash=flash),
        "clip": vision.peak_live * candidates * nbytes,
    }
    peak_part = max(gen_parts, key=gen_parts.get)
    jobs.append(Job("generate", f"micro-batch {rows} x 2 (guidance) at {gen_latent}x{gen_latent} latents, "
                    f"{gen_size} px decode; peak in the {peak_part}",
                    sum(m.bytes for m in models.values()), 0, gen_parts[peak_part], 0, reserve, gen_parts))
    for job in jobs:
        job.headroom_gb = {f"{m:g}": m - job.total / GB for m in a.memory_gb}

    # -- FLOPs and time --------------------------------------------------------------------------------------------
    rate = a.peak_tflops * 1e12 * a.mfu
    llm_fwd = llama.forward_flops(llm, s, keys)
    llm_bwd = llama.input_grad_flops(llm, s, keys)
    unet_rows_f = unet_rows / b
    train_parts = {"llm forward": llm_fwd, "llm backward": llm_bwd,
                   "unet forward": train_unet.flops * unet_rows_f, "unet backward": train_unet.grad_flops * unet_rows_f}
    if tr.recompute:  # the forward passes run again in the backward
        train_parts["recompute"] = llm_fwd + train_unet.flops * unet_rows_f
    prompts = 2 * _attributes(cfg) + (1 if kw.integrate else 0)
    if kw.use_past:
        per_prompt = llama.forward_flops(llm, s, logits=1) + (kw.max_new_tokens - 1) * llama.decode_flops(llm, s)
    else:  # every new token runs the whole padded sequence again
        per_prompt = kw.max_new_tokens * llama.forward_flops(llm, s, logits=1)
    gen_work = {
        "llm (soft preference)": llm_fwd,
        "unet": candidates * g.steps * 2 * gen_unet.flops,
        "vae decode": candidates * decoder.flops,
        "text encoder": 2 * text_tally(text, tokens=text_len).flops,
        "clip": candidates * vision.flops + 2 * text_tally(clip.text, projection_dim=clip.projection_dim).flops,
    }
    work = [
        Work("training sample", f"LLM forward + backward to the inputs over {s} tokens, UNet forward + backward "
             f"to the context" + (", recompute" if tr.recompute else ""), sum(train_parts.values()), train_parts),
        Work("generated sample", f"{candidates} candidates x {g.steps} steps x 2 (guidance) UNet passes, "
             f"{candidates} VAE decodes at {gen_size} px, CLIP, one LLM pass", sum(gen_work.values()), gen_work),
        Work("keyword sample", f"{prompts} prompts: prefill {s} tokens + {kw.max_new_tokens} new tokens"
             + ("" if kw.use_past else " without KV cache"), prompts * per_prompt, {"llm": prompts * per_prompt}),
    ]
    for w in work:
        w.samples_per_s = rate / w.flops
    per_worker = tr.max_steps * b * tr.grad_accum_steps
    evals = (tr.max_steps // tr.eval_every if tr.eval_every else 0) + 1
    eval_flops = evals * tr.eval_batches * b * (llm_fwd + train_unet.flops * unet_rows_f)
    seconds = (per_worker * work[0].flops + eval_flops) / rate
    run = {"steps": tr.max_steps, "batch_size": b, "grad_accum_steps": tr.grad_accum_steps,
           "samples_per_step": b * tr.grad_accum_steps * a.nproc,
           "samples": per_worker * a.nproc, "step_seconds": b * tr.grad_accum_steps * work[0].flops / rate,
           "eval_samples_per_worker": evals * tr.eval_batches * b, "hours": seconds / 3600}

    if precision == "fp32":
        notes.append("precision fp32: times use the 16-bit peak, so fp32 runs will be several times slower")
    if not flash:
        notes.append("flash attention off: every attention keeps its score matrices (LLM: fp32 softmax + a "
                     "compute-dtype copy)")
    return Plan(cfg.source, a, precision, nbytes, flash, list(models.values()), soft_params, jobs, work, run, notes)


def _attributes(cfg: PMGConfig) -> int:
    """Attributes of the keyword prompt set: one preference and one target prompt each per sample."""
    from research.pmg.keywords.prompts import load_templates, resolve_templates

    return len(load_templates(resolve_templates(cfg.keywords.templates, cfg.scenario)).attributes)
