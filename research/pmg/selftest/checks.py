"""The self-test's checks: tiny PMG models through the real training step, soft-preference encoder and sampler.

Inputs are synthetic and seeded (prompt ids with right padding, latents, keyword contexts, noise, timesteps), so
the run needs no data, keywords or weights and gives the same numbers wherever the models give the same
numbers. Random-init weights are drawn on the host from the seed (MindSpore's initializers), and the
``weights`` check compares their fingerprint first, so a device that builds other weights is named as such
instead of failing every later check.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from research.pmg.config import PMGConfig
from research.pmg.runtime import Runtime, seed_everything

REFERENCE = Path(__file__).with_name("reference.json")
TRAIN_STEPS = 3  # optimizer steps of the train_step check (each its own noise and timesteps)
DP_STEPS = 2  # optimizer steps of the data-parallel run
SAMPLER = dict(name="ddim", steps=4, guidance=5.0)
WEIGHTS = (1.0, 1.0, 1.0)  # w_t, w_p, w_s of the generated candidates
# Relative tolerances per compute precision: a device's fp32 kernels differ from CPU's in summation order (and
# Ascend may run fp32 matmuls through HF32), bf16 keeps 8 mantissa bits, fp16 11. "images" is the mean absolute
# pixel difference in [0, 1]; the others are max |got - ref| / max |ref|.
TOLERANCES = {
    "fp32": {"weights": 1e-6, "losses": 2e-3, "soft_embedding": 5e-3, "images": 5e-3, "flash": 2e-3, "dp": 1e-4},
    "fp16": {"weights": 1e-3, "losses": 2e-2, "soft_embedding": 5e-2, "images": 3e-2, "flash": 2e-2, "dp": 1e-2},
    "bf16": {"weights": 8e-3, "losses": 5e-2, "soft_embedding": 1e-1, "images": 5e-2, "flash": 5e-2, "dp": 2e-2},
}


@dataclass
class Check:
    """One line of the report: ``PASS``, ``FAIL`` or ``SKIP`` (not applicable here, never a pass)."""

    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


@dataclass
class Models:
    """The tiny PMG models of one build, with the step that trains them."""

    cfg: PMGConfig
    runtime: Runtime
    sd: Any  # research.pmg.models.diffusion.DiffusionParts
    encoder: Any  # SoftPreferenceEncoder
    loss_net: Any  # PMGDiffusionLoss
    step: Any  # the jitted TrainStep


def build_models(cfg: PMGConfig, runtime: Runtime, batch_size: int) -> Models:
    """Seeded random-init SD and Llama, the soft-preference encoder, the loss and the training step."""
    from research.pmg.models import build_diffusion_parts, build_llm, resolve_tokenizers
    from research.pmg.models.soft_preference import SoftPreferenceEncoder
    from research.pmg.train.step import PMGDiffusionLoss, build_train_step

    seed_everything(cfg.runtime.seed)
    sd = build_diffusion_parts(cfg, runtime, resolve_tokenizers(cfg, runtime))
    llama = build_llm(cfg, runtime, batch_size=batch_size, recompute=cfg.train.recompute)
    encoder = SoftPreferenceEncoder(llama, cfg.models.llm, cfg.models.soft_preference, sd.cross_attention_dim,
                                    runtime.compute_dtype)
    alphas = sd.scheduler.alphas_cumprod
    alphas = alphas.asnumpy() if hasattr(alphas, "asnumpy") else np.asarray(alphas)
    loss_net = PMGDiffusionLoss(encoder, sd.unet, alphas, sd.scheduler.config.prediction_type, cfg.train)
    step, _ = build_train_step(loss_net, cfg.train, runtime.precision)
    return Models(cfg, runtime, sd, encoder, loss_net, step)


def synthetic_batch(cfg: PMGConfig, sd, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Training inputs for ``rows`` samples; every other prompt is right-padded to half its length.

    prompt_ids ``(rows, seq_length - L)`` int32, latents and noise ``(steps, rows, c, h, w)``, target and
    preference contexts ``(rows, n_text, ctx_dim)``, timesteps ``(steps, rows)`` int32.
    """
    llm, soft = cfg.models.llm, cfg.models.soft_preference
    rng = np.random.default_rng(seed)
    prompt_len = llm.seq_length - soft.num_mm_tokens
    ids = rng.integers(llm.pad_token_id + 1, llm.vocab_size, size=(rows, prompt_len)).astype(np.int32)
    ids[1::2, prompt_len // 2:] = llm.pad_token_id
    unet = sd.unet.config
    latent = (int(unet.in_channels), int(unet.sample_size), int(unet.sample_size))
    n_text, ctx = cfg.models.diffusion.tokenizer_max_length, sd.cross_attention_dim
    steps = max(TRAIN_STEPS, DP_STEPS)
    timesteps = int(sd.scheduler.config.num_train_timesteps)
    return {
        "prompt_ids": ids,
        "latents": rng.standard_normal((rows,) + latent).astype(np.float32),
        "target_ctx": rng.standard_normal((rows, n_text, ctx)).astype(np.float32),
        "pref_ctx": rng.standard_normal((rows, n_text, ctx)).astype(np.float32),
        "noise": rng.standard_normal((steps, rows) + latent).astype(np.float32),
        "timesteps": rng.integers(0, timesteps, size=(steps, rows)).astype(np.int32),
        "uncond_ctx": rng.standard_normal((n_text, ctx)).astype(np.float32),
    }


def train(models: Models, batch: dict[str, np.ndarray], steps: int, rows: slice = slice(None)) -> list[float]:
    """``steps`` optimizer steps on ``batch[rows]``; the logged loss of each (averaged over msrun workers)."""
    import mindspore as ms

    losses = []
    for step in range(steps):
        inputs = (batch["prompt_ids"][rows], batch["latents"][rows], batch["target_ctx"][rows],
                  batch["pref_ctx"][rows], batch["noise"][step][rows], batch["timesteps"][step][rows])
        out = models.step(*(ms.Tensor(np.ascontiguousarray(x)) for x in inputs))
        losses.append(float(out[1].asnumpy()))
    return losses


def soft_embedding(models: Models, prompt_ids: np.ndarray) -> np.ndarray:
    """The encoder's soft preference ``(rows, L, ctx_dim)`` float32 for ``prompt_ids`` (inference mode)."""
    import mindspore as ms

    models.encoder.set_train(False)
    try:
        return models.encoder(ms.Tensor(prompt_ids)).astype(ms.float32).asnumpy()
    finally:
        models.encoder.set_train(True)


def generate(models: Models, batch: dict[str, np.ndarray], soft: np.ndarray) -> np.ndarray:
    """PMG's sampler on the contexts PMG builds (target, preference, soft): ``(rows, H, W, 3)`` in [0, 1]."""
    import mindspore as ms

    from research.pmg.generate.pipeline import GenerationPipeline
    from research.pmg.models.conditioning import assemble_context
    from research.pmg.models.diffusion import build_scheduler

    scheduler = build_scheduler(replace(models.cfg.models.diffusion.scheduler, name=SAMPLER["name"]))
    pipeline = GenerationPipeline(models.sd, scheduler, steps=SAMPLER["steps"], guidance=SAMPLER["guidance"],
                                  micro_batch=len(soft))
    cond = assemble_context(ms.Tensor(batch["target_ctx"]), ms.Tensor(batch["pref_ctx"]), ms.Tensor(soft),
                            *WEIGHTS).asnumpy()
    latents = pipeline.initial_latents([(models.cfg.runtime.seed, i) for i in range(len(soft))])
    # Laid out as generation's unconditional branch: the negative prompt in both keyword groups, zeros for soft.
    negative = batch["uncond_ctx"]
    uncond = np.concatenate([negative, negative, np.zeros(soft.shape[1:], np.float32)])
    return pipeline(cond, uncond, latents)


def weight_fingerprint(models: Models) -> dict[str, list[float]]:
    """Sum and sum of squares (float64) of each frozen model's initial weights: [sum, sum of squares]."""
    parts = {"llm": models.encoder.llama, "unet": models.sd.unet, "vae": models.sd.vae}
    out = {}
    for name, cell in parts.items():
        values = [p.asnumpy().astype(np.float64).ravel() for p in cell.get_parameters()
                  if "paged_attention_mgr" not in p.name]
        flat = np.concatenate(values)
        out[name] = [float(flat.sum()), float((flat ** 2).sum())]
    return out


def relative_error(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def compare(name: str, error: float, tolerance: float, what: str) -> Check:
    ok = np.isfinite(error) and error <= tolerance
    return Check(name, "PASS" if ok else "FAIL", f"{what}: error {error:.3g} (tolerance {tolerance:g})")


def load_reference(path: Path = REFERENCE) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def measure(models: Models, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the reference records: weight fingerprints, training losses, the soft embedding after training and
    the generated images."""
    fingerprint = weight_fingerprint(models)
    losses = train(models, batch, TRAIN_STEPS)
    soft = soft_embedding(models, batch["prompt_ids"])
    images = generate(models, batch, soft)
    return {"weights": fingerprint, "losses": losses, "soft_embedding": soft.tolist(), "images": images.tolist()}


def reference_checks(measured: dict[str, Any], reference: dict[str, Any], precision: str) -> list[Check]:
    """PASS/FAIL of each measured value against the reference, at ``precision``'s tolerances."""
    tol = TOLERANCES[precision]
    weights = max(relative_error(measured["weights"][k], reference["weights"][k]) for k in reference["weights"])
    checks = [compare("weights", weights, tol["weights"], "tiny models' random-init weights (sum, sum of squares)")]
    if checks[0].status == "FAIL":
        checks[0].detail += "; this device builds other weights, so the checks below cannot compare"
    checks.append(compare("train_step", relative_error(measured["losses"], reference["losses"]), tol["losses"],
                          f"losses of {TRAIN_STEPS} training steps {np.round(measured['losses'], 5).tolist()}"))
    checks.append(compare("soft_embedding", relative_error(measured["soft_embedding"], reference["soft_embedding"]),
                          tol["soft_embedding"], "soft preference after training"))
    got, ref = np.asarray(measured["images"]), np.asarray(reference["images"])
    error = float(np.mean(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
    checks.append(compare("generation", error, tol["images"],
                          f"{len(ref)} images, {SAMPLER['name']} {SAMPLER['steps']} steps, mean |pixel| difference"))
    return checks


def length_bucket_check(models: Models, batch: dict[str, np.ndarray]) -> Check:
    """The trained encoder gives the same soft embedding for right-padded prompts cut to a shorter width.

    ``models.soft_preference.length_buckets`` runs shorter prompts at a bucket's width: a graph of its own, with
    MindFormers' causal mask sliced to it and, on a device, flash attention at that length. Every row here is a
    half-length prompt of ``batch``, encoded at the full width and at half of it.
    """
    ids = batch["prompt_ids"]
    half = ids.shape[1] // 2
    short = np.resize(ids[1::2], ids.shape)  # the half-length prompts, repeated to the batch's rows
    full = soft_embedding(models, short)
    cut = soft_embedding(models, np.ascontiguousarray(short[:, :half]))
    # Two graphs on one device: on CPU they agree to float rounding (1.2e-7 in tests/test_models.py), and a misplaced
    # token shows at 1e-3; a device's kernels may tile the two lengths differently (HF32, bf16), as flash on/off.
    runtime = models.runtime
    tolerance = 1e-5 if runtime.device == "CPU" else TOLERANCES[runtime.precision]["flash"]
    return compare("length_buckets", relative_error(cut, full), tolerance,
                   f"soft embedding of prompts cut from {ids.shape[1]} to {half} tokens vs uncut")


def prefix_attention_check(cfg: PMGConfig, runtime: Runtime, batch: dict[str, np.ndarray]) -> Check:
    """Prefix attention with flash attention equals it without.

    On a device with the kernel, two seeded encoders (flash on, flash off) encode the same prompts. Elsewhere the
    flash-attention arguments and mask the project builds are run through the NumPy model of the kernel
    (:mod:`research.pmg.selftest.attention`) and compared with ordinary prefix attention, for either corner.
    """
    from research.pmg.models import build_llm
    from research.pmg.models.soft_preference import SoftPreferenceEncoder
    from research.pmg.selftest import attention

    llm, soft = cfg.models.llm, cfg.models.soft_preference
    rows = len(batch["prompt_ids"])
    if runtime.flash_attention:
        outputs = {}
        for flash in (True, False):
            seed_everything(cfg.runtime.seed)
            encoder = SoftPreferenceEncoder(build_llm(cfg, replace(runtime, flash_attention=flash), batch_size=rows),
                                            llm, soft, 32, runtime.compute_dtype)
            outputs[flash] = soft_embedding(Models(cfg, runtime, None, encoder, None, None), batch["prompt_ids"])
        return compare("prefix_attention", relative_error(outputs[True], outputs[False]),
                       TOLERANCES[runtime.precision]["flash"], "soft embedding with flash attention on vs off")
    seed_everything(cfg.runtime.seed)
    llama = build_llm(cfg, replace(runtime, flash_attention=True), batch_size=rows)  # built, never run here
    SoftPreferenceEncoder(llama, llm, soft, 32)
    args = attention.flash_args(llama)
    # The mask sees ids only: where the L multimodal positions sit does not change the band-versus-mask question.
    tokens = np.concatenate([batch["prompt_ids"], np.full((rows, soft.num_mm_tokens), llm.pad_token_id + 1,
                                                          np.int32)], axis=1)
    error = max(max(attention.band_errors(llama, tokens, soft.prefix_len, llm.pad_token_id, a,
                                          cfg.runtime.seed).values()) for a in args)
    check = compare("prefix_attention", error, 1e-9, "flash-attention arguments and mask through a NumPy model "
                    f"of FlashAttentionScore vs ordinary prefix attention ({len(args)} layers, next_tokens "
                    f"{sorted({a.next_tokens for a in args})})")
    check.detail += "; no flash-attention kernel here: the device run settles the kernel itself"
    return check


def trainable_values(models: Models) -> dict[str, np.ndarray]:
    """The soft-preference parameters (the only trainable ones), float32."""
    return {name: param.asnumpy().astype(np.float32) for name, param in models.loss_net.parameters_and_names()
            if param.requires_grad}


def data_parallel_checks(ranks: list[dict[str, Any]], single: dict[str, np.ndarray], runtime: Runtime,
                         nproc: int) -> list[Check]:
    """Replicas agree with each other and with one worker on the whole global batch; each had its own device.

    ``ranks``: what each msrun worker wrote (:func:`worker_record`); ``single``: trainable values after the
    same steps in one process.
    """
    tol = TOLERANCES[runtime.precision]["dp"]
    if sorted(r["rank"] for r in ranks) != list(range(nproc)):
        found = sorted(r["rank"] for r in ranks)
        return [Check("data_parallel", "FAIL", f"expected results of ranks 0..{nproc - 1}, got {found}")]
    params = [{k: np.asarray(v, np.float32) for k, v in r["params"].items()} for r in ranks]
    spread = max(relative_error(p[name], params[0][name]) for p in params[1:] for name in params[0])
    checks = [compare("data_parallel_replicas", spread, 1e-6,
                      f"trainable parameters of {nproc} workers after {DP_STEPS} steps, against rank 0")]
    gap = max(relative_error(params[0][name], single[name]) for name in single) if sorted(single) == sorted(
        params[0]) else float("inf")
    checks.append(compare("data_parallel_vs_single", gap, tol,
                          f"rank 0 vs one worker on the whole global batch of {nproc} x per-worker batch"))
    asked = {r["requested_device_id"] for r in ranks}
    devices = [tuple(r["device"]) for r in ranks]
    if any(a is not None for a in asked):
        checks.append(Check("devices", "FAIL", f"workers asked MindSpore for device ids {sorted(asked)}: msrun could "
                                               "not place them"))
    elif devices[0][0] == "Ascend":
        ids = [d[1] for d in devices]
        assigned = [r.get("msrun_device_id") for r in ranks]
        ok = len(set(ids)) == len(ids)
        checks.append(Check("devices", "PASS" if ok else "FAIL", f"device id per rank {ids} (msrun's DEVICE_ID "
                            f"{assigned})" + ("" if ok else ": several workers on one NPU (see `npu-smi info` "
                                                            "while a job runs)")))
    else:
        checks.append(Check("devices", "PASS", f"{len(ranks)} workers asked for no explicit device (msrun's "
                                               "choice); device ids only exist on NPUs, so the device run settles "
                                               "that each worker gets its own"))
    return checks


def worker_record(models: Models, losses: list[float]) -> dict[str, Any]:
    """What an msrun worker reports back to the parent (written as JSON)."""
    import mindspore as ms

    current = ms.get_current_device()
    return {"rank": models.runtime.rank, "world": models.runtime.world_size, "losses": losses,
            "device": [current.device_target, int(current.device_id)],
            "requested_device_id": models.runtime.device_id,
            "msrun_device_id": os.environ.get("DEVICE_ID"),  # what msrun assigned this worker (its local rank)
            "params": {k: v.tolist() for k, v in trainable_values(models).items()}}
