"""A :class:`~research.pmg.plan.jobs.Plan` as a Markdown report (for people) or a JSON document (for scripts)."""
from __future__ import annotations

import dataclasses
from typing import Any

from research.pmg.plan.jobs import GB, Job, Plan


def verdict(headroom_gb: float) -> str:
    return f"fits (+{headroom_gb:.1f})" if headroom_gb >= 0 else f"does not fit ({headroom_gb:.1f})"


def count(n: float) -> str:
    """A parameter or FLOP count with an SI suffix: 6.74 B, 859.5 M, 16.4 K."""
    for div, suffix in ((1e12, " T"), (1e9, " B"), (1e6, " M"), (1e3, " K")):
        if abs(n) >= div:
            return f"{n / div:.{2 if div >= 1e9 else 1}f}{suffix}"
    return f"{n:g}"


def _gb(nbytes: float, dash: bool = False) -> str:
    return "-" if dash and not nbytes else f"{nbytes / GB:.2f}"


def to_markdown(plan: Plan) -> str:
    a = plan.assumptions
    cards = [f"{m:g}" for m in a.memory_gb]
    lines = [
        f"# Plan: {plan.source} on {a.chip.name}", "",
        f"Per NPU, {f'{a.nproc} NPUs data parallel' if a.nproc > 1 else 'one NPU'}; {plan.precision} "
        f"({plan.dtype_bytes} bytes per weight and activation), flash attention {'on' if plan.flash else 'off'}, "
        f"framework reserve {a.reserve_gb:g} GB. GB = 2^30 bytes. An estimate from counted parameters, "
        "activations and FLOPs, not a measurement.", "",
        "## Memory per NPU (GB)", "",
        "| job | weights | trainable | activations | KV cache | reserve | total | "
        + " | ".join(f"{c} GB card" for c in cards) + " |",
        "|---|" + "---:|" * 6 + "---|" * len(cards),
    ]
    for job in plan.jobs:
        lines.append(f"| {job.name} | {_gb(job.weights)} | {_gb(job.trainable, True)} | {_gb(job.activations)} | "
                     f"{_gb(job.kv_cache, True)} | {_gb(job.reserve)} | **{_gb(job.total)}** | "
                     + " | ".join(verdict(job.headroom_gb[c]) for c in cards) + " |")
    lines.append("")
    for job in plan.jobs:
        floor = f" (frozen-weight floor {_gb(job.activations_floor)} in all)" if job.activations_floor else ""
        lines.append(f"- {job.name}: {job.detail}; activations " + ", ".join(
            f"{k} {_gb(v)}" for k, v in job.parts.items()) + f" GB{floor}")
    lines += ["", "## Models", "", "| model | from | parameters | GB |", "|---|---|---:|---:|"]
    for m in plan.models:
        lines.append(f"| {m.name} | {m.source} | {count(m.params)} | {_gb(m.bytes)} |")
    soft = plan.soft_params
    train_job = plan.jobs[0]
    lines.append(f"| soft preference (trainable, fp32 + gradients + AdamW) | prefix {count(soft['prefix'])}, "
                 f"tokens {count(soft['mm_tokens'])}, map {count(soft['map'])} | {count(sum(soft.values()))} | "
                 f"{_gb(train_job.trainable)} |")
    lines.append("")
    lines.append("Training holds the LLM, UNet, VAE and text encoder (the last two fill the encoding cache); keyword "
                 "extraction the LLM; generation all five.")
    run = plan.run
    lines += ["", f"## Time per NPU (peak {a.peak_tflops:g} TFLOPS x MFU {a.mfu:.0%})", "",
              "| work | TFLOPs per sample | samples/s per NPU | parts (TFLOPs) |", "|---|---:|---:|---|"]
    for w in plan.work:
        parts = ", ".join(f"{k} {v / 1e12:.2f}" for k, v in w.parts.items())
        lines.append(f"| {w.name} ({w.detail}) | {w.flops / 1e12:.2f} | {w.samples_per_s:.2f} | {parts} |")
    lines += ["", f"Training run: {run['steps']} steps x {run['samples_per_step']} samples "
              f"({plan_batch(plan)}) = {run['samples']:,} samples: {run['step_seconds']:.1f} s per step, "
              f"**{run['hours']:.1f} hours** (held-out evaluation included).", "",
              "## Assumptions", "",
              f"- {a.chip.name}: dense 16-bit peak {a.peak_tflops:g} TFLOPS (`--peak-tflops`), model FLOPs "
              f"utilisation {a.mfu:.0%} (`--mfu`); card sizes {', '.join(cards)} GB (`--memory-gb`); framework "
              f"reserve {a.reserve_gb:g} GB for the CANN runtime, HCCL buffers and workspace (`--reserve-gb`).",
              "- FLOPs: 2 per multiply-add in matmuls, convolutions and attention. The frozen models' backward "
              "passes compute input gradients only (about one forward; attention twice).",
              "- Training activations: every op on the gradient path keeps the inputs its backward reads "
              "(Korthikanti et al. 2022's count), the verdicts' figure. With frozen weights the linear and "
              "convolution inputs are only needed for weight gradients: without them is the floor, reached if "
              "the compiler drops them. Recompute keeps each layer's / block's input plus one layer's set. "
              "Inference: the largest single call's working set.",
              "- Keyword decoding is memory-bound (each step reads every weight): expect keyword samples/s well "
              "below the compute-bound figure unless `keywords.batch_size` is large.",
              "- Data parallel: each NPU holds every model; only the soft-preference gradients are all-reduced."]
    lines += [f"- {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"


def plan_batch(plan: Plan) -> str:
    """``4 per NPU x 4 accumulation steps x 8 NPUs``: how a step's samples are made up."""
    run, n = plan.run, plan.assumptions.nproc
    accum = f" x {run['grad_accum_steps']} accumulation steps" if run["grad_accum_steps"] > 1 else ""
    return f"{run['batch_size']} per NPU{accum} x {n} NPU{'s' if n > 1 else ''}"


def to_json(plan: Plan) -> dict[str, Any]:
    """Everything in the report, numbers in bytes / FLOPs (and GB where a verdict is given)."""
    a = plan.assumptions

    def job(j: Job) -> dict[str, Any]:
        return {**{k: v for k, v in dataclasses.asdict(j).items() if k != "headroom_gb"}, "total": j.total,
                "total_gb": j.total / GB, "headroom_gb": j.headroom_gb,
                "fits": {card: room >= 0 for card, room in j.headroom_gb.items()}}

    return {
        "config": plan.source,
        "assumptions": {"chip": a.chip.name, "nproc": a.nproc, "peak_tflops": a.peak_tflops, "mfu": a.mfu,
                        "reserve_gb": a.reserve_gb, "memory_gb": list(a.memory_gb), "precision": plan.precision,
                        "dtype_bytes": plan.dtype_bytes, "flash_attention": plan.flash},
        "models": [dataclasses.asdict(m) for m in plan.models],
        "soft_preference": {**plan.soft_params, "total": sum(plan.soft_params.values())},
        "jobs": [job(j) for j in plan.jobs],
        "work": [dataclasses.asdict(w) for w in plan.work],
        "training_run": plan.run,
        "notes": plan.notes,
    }
