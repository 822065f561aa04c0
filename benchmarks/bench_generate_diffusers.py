"""Candidates per second of one SD sampling loop: this project's, MindSpore graph mode, vs diffusers, PyTorch eager.

    python benchmarks/bench_generate_diffusers.py                        # tiny, DPM-Solver, 3 rounds: ~4 min
    python benchmarks/bench_generate_diffusers.py --sizes tiny,small --schedulers ddim,dpm_solver --steps 30
    python benchmarks/bench_generate_diffusers.py --parity-only          # the image comparison alone
    python benchmarks/bench_generate_diffusers.py --out runs.jsonl       # also append one JSON line per run

The work measured is one sample of the generate stage: K weight sets x M images = K*M candidates denoised in one
UNet batch (``generate.micro_batch`` = K*M, so 2*K*M rows with guidance), then decoded by the VAE.

- **MindSpore** (``ms-graph``): the project's ``GenerationPipeline`` on configs/tiny.yaml's random-init SD, built
  as the generate stage builds it (seeded, ``build_diffusion_parts``, ``generation_scheduler``), in graph mode:
  the guided UNet call and the VAE decoder are compiled cells; the scheduler's step runs op by op between them,
  as in the stage.
- **diffusers** (``pt-eager``): ``StableDiffusionPipeline`` with a ``UNet2DConditionModel`` and an
  ``AutoencoderKL`` of the same configuration carrying the MindSpore weights (MindONE's parameter names are
  diffusers' own, loaded strictly), and the diffusers scheduler class of the same name built from the MindONE
  scheduler's complete config (every key written out, so neither side falls back on its own defaults).
- **Same inputs**: the text contexts are encoded once, by the MindSpore text encoder, exactly as the stage makes
  them (``candidate_contexts`` with scaling weights for the target and preference keywords, repeated M times;
  ``unconditional_context`` of the scenario's negative prompt), and handed to diffusers as ``prompt_embeds`` /
  ``negative_prompt_embeds``; the PyTorch text encoder and tokenizer are not used. The initial latents are the
  stage's (``initial_latents``, one NumPy generator per candidate). Text encoding is outside the timed call on
  both sides; the timed call is sampling + decoding to float images in [0, 1].
- **Threads**: MindSpore's ``runtime_num_threads`` and ``torch.set_num_threads`` are both ``--threads`` (default:
  every core, as the config's ``runtime.num_threads: 0``).

Method:

1. **Parity first**, per size and scheduler: a MindSpore process (graph mode) writes the weights, contexts,
   latents, scheduler config and its images; a PyTorch process runs diffusers on them and compares the images:
   max |difference| of the [0, 1] floats within ``ATOL`` (and the uint8 images, rounded as diffusers'
   ``numpy_to_pil``, at most one level apart). If parity fails, that combination is not timed and the script
   exits 1. Every timed run's first images are compared with the dump as well.
2. **Timed runs**, each in a fresh subprocess (compile time and peak RSS belong to one run): ``--repeats``
   rounds, the two sides alternating which goes first. Per run: build time (models and weights, with the lazy
   imports they trigger), the first call (graph compilation on the MindSpore side, PyTorch's first-call set-up),
   ``--warmup`` untimed calls, then the median of ``--calls`` timed calls; peak RSS (``ru_maxrss``).
3. The table gives each side's median over rounds; the ratio is of candidates/s, MindSpore / diffusers, with its
   spread over rounds. The load average is printed at the start, per run and at the end: on a shared 2-core
   machine the times are indicative only, and 2-thread runs (PyTorch's most) lose much when another process holds
   a core (OpenMP threads wait for each other); compare with ``--threads 1``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from research.pmg.config import ConfigError, PMGConfig, load_config  # noqa: E402
from research.pmg.config.generate import GenerateConfig  # noqa: E402

TINY_CONFIG = REPO / "configs" / "tiny.yaml"
# ``small``: the UNet of bench_train_step.py's small size (channels 64/128 at 16x16 latents, 32x32 images).
SIZES = {
    "tiny": [],
    "small": ["models.diffusion.unet.block_out_channels=[64,128]", "models.diffusion.unet.sample_size=16",
              "models.diffusion.unet.cross_attention_dim=256", "models.diffusion.text_encoder.hidden_size=256",
              "models.diffusion.text_encoder.intermediate_size=512"],
}
SCHEDULERS = ("ddim", "dpm_solver")
SIDES = ("ms-graph", "pt-eager")
# (w_p, w_t) pairs in the order the README's weight sets list them; the first K are used.
WEIGHT_SETS = [[1, 1], [1, 2], [2, 1], [2, 2], [1, 3], [3, 1], [2, 3], [3, 2]]
TARGET, PREFERENCE = "bear face, animals, sticker", "cat, frog, cartoon, cute"
# Both sides compute in float32: what differs is the order of float rounding (MindSpore CPU kernels vs PyTorch),
# amplified by guidance and the steps. Measured: 3e-6 to 7e-6 of the [0, 1] range (tiny and small, DDIM and
# DPM-Solver at 10 steps, DPM-Solver at 30). 1e-4 (0.026 of one uint8 level) keeps a margin of 15 over that; every
# break of the diffusers side tried moved pixels by 1e-2 or more (contexts swapped, guidance + 0.5, one step more,
# DDIM instead of DPM-Solver, the candidates' latents reordered).
ATOL = 1e-4
LOADED = 1.5  # 1-minute load average above which the output says the machine was busy


# ---------------------------------------------------------------------------------------------------------------------
# Settings shared by every process
# ---------------------------------------------------------------------------------------------------------------------
def bench_config(size: str, extra: list[str], output_dir: str) -> PMGConfig:
    """tiny.yaml + the size's overrides + the user's, in graph mode."""
    return load_config(TINY_CONFIG, [*SIZES[size], *extra, f"runtime.output_dir={output_dir}", "runtime.mode=graph"])


def generate_settings(args: argparse.Namespace, scheduler: str) -> GenerateConfig:
    """The generate stage's settings for one sample of K x M candidates in one UNet batch."""
    k, m = args.weight_sets, args.images_per_set
    settings = GenerateConfig(weight_sets=WEIGHT_SETS[:k], images_per_set=m, steps=args.steps, guidance=args.guidance,
                              scheduler=scheduler, micro_batch=k * m)
    settings.validate("bench_generate_diffusers: ")
    return settings


def threads(cfg: PMGConfig) -> int:
    return cfg.runtime.num_threads or os.cpu_count() or 1


def timed_calls(generate, calls: int, warmup: int) -> tuple[np.ndarray, list[float]]:
    """The first call's images and the seconds of every call (first, warm-up, timed)."""
    times, first = [], None
    for i in range(1 + warmup + calls):
        start = time.perf_counter()
        images = generate()
        times.append(time.perf_counter() - start)
        first = images if i == 0 else first
    return first, times


def summary(times: list[float], warmup: int, build_s: float, images: np.ndarray, reference: np.ndarray,
            **extra) -> dict:
    steady = times[1 + warmup:]
    return dict(build_s=round(build_s, 2), first_call_s=round(times[0], 3), median_s=statistics.median(steady),
                min_s=min(steady), max_s=max(steady), n=len(steady), candidates=len(images),
                max_abs_diff=float(np.abs(images - reference).max()),
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **extra)


# ---------------------------------------------------------------------------------------------------------------------
# MindSpore: the project's pipeline
# ---------------------------------------------------------------------------------------------------------------------
def build_mindspore(cfg: PMGConfig, settings: GenerateConfig):
    """The generate stage's ``GenerationPipeline`` on the config's SD (random init: seeded, as the stage seeds it)."""
    from research.pmg.runtime import seed_everything, setup_runtime

    runtime = setup_runtime(cfg.runtime)
    from research.pmg.generate.pipeline import GenerationPipeline
    from research.pmg.generate.run import generation_scheduler
    from research.pmg.models import build_diffusion_parts, resolve_tokenizers

    seed_everything(cfg.runtime.seed)
    sd = build_diffusion_parts(cfg, runtime, resolve_tokenizers(cfg, runtime))
    return GenerationPipeline(sd, generation_scheduler(cfg, settings), steps=settings.steps,
                              guidance=settings.guidance, micro_batch=settings.micro_batch, size=settings.size)


def stage_inputs(cfg: PMGConfig, settings: GenerateConfig, pipeline) -> dict[str, np.ndarray]:
    """One sample's inputs as the generate stage makes them: cond ``(K*M, T, ctx_dim)`` (weight set major),
    uncond ``(T, ctx_dim)``, latents ``(K*M, c, h, w)``; T = 2 x tokenizer_max_length (target + preference)."""
    from research.pmg.generate.conditioning import candidate_contexts, unconditional_context
    from research.pmg.models.conditioning import encode_texts

    sd, max_length = pipeline.parts, cfg.models.diffusion.tokenizer_max_length

    def encode(texts):
        return encode_texts(sd.text_encoder, sd.tokenizer, texts, max_length)

    k, m = len(settings.weight_sets), settings.images_per_set
    cond = candidate_contexts(encode, TARGET, PREFERENCE, None, settings.weight_sets, settings.weighting)
    return {"cond": np.repeat(cond, m, axis=0),
            "uncond": unconditional_context(encode, settings.negative_for(cfg.scenario)),
            "latents": pipeline.initial_latents([(cfg.runtime.seed, 0, i, j) for i in range(k) for j in range(m)])}


def dump_mindspore(cfg: PMGConfig, settings: GenerateConfig, data: Path) -> dict:
    """Weights (``weights.npz``), inputs and images (``inputs.npz``) and the scheduler (``scheduler.json``)."""
    import mindspore as ms

    pipeline = build_mindspore(cfg, settings)
    inputs = stage_inputs(cfg, settings, pipeline)
    images = pipeline(inputs["cond"], inputs["uncond"], inputs["latents"])
    weights = {f"{prefix}.{name}": param.asnumpy() for prefix, cell in (("unet", pipeline.parts.unet),
                                                                         ("vae", pipeline.parts.vae))
               for name, param in cell.parameters_and_names()}
    np.savez(data / "weights.npz", **weights)
    np.savez(data / "inputs.npz", images=images, **inputs)
    scheduler = pipeline.scheduler
    config = {key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")}
    (data / "scheduler.json").write_text(json.dumps({"class": type(scheduler).__name__, "config": config}, indent=1))
    return dict(role="dump", scheduler_class=type(scheduler).__name__, pixel_std=float(images.std()),
                shape=list(images.shape), version=f"mindspore {ms.__version__}")


def run_mindspore(cfg: PMGConfig, settings: GenerateConfig, data: Path, calls: int, warmup: int) -> dict:
    import mindspore as ms

    started = time.perf_counter()
    pipeline = build_mindspore(cfg, settings)
    inputs = dict(np.load(data / "inputs.npz"))
    build_s = time.perf_counter() - started
    images, times = timed_calls(lambda: pipeline(inputs["cond"], inputs["uncond"], inputs["latents"]), calls, warmup)
    return summary(times, warmup, build_s, images, inputs["images"], framework="mindspore", mode="graph",
                   threads=ms.get_context("runtime_num_threads"), version=f"mindspore {ms.__version__}")


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch: diffusers' StableDiffusionPipeline on the MindSpore weights
# ---------------------------------------------------------------------------------------------------------------------
def build_diffusers(cfg: PMGConfig, data: Path):
    """``(pipeline, scheduler config mismatches)``: diffusers' pipeline with the dumped weights and scheduler."""
    import diffusers
    import torch

    weights = np.load(data / "weights.npz")
    unet = diffusers.UNet2DConditionModel(**cfg.models.diffusion.unet)
    vae = diffusers.AutoencoderKL(**cfg.models.diffusion.vae)
    for prefix, model in (("unet.", unet), ("vae.", vae)):
        model.load_state_dict({name[len(prefix):]: torch.from_numpy(weights[name]) for name in weights.files
                               if name.startswith(prefix)}, strict=True)
    spec = json.loads((data / "scheduler.json").read_text())
    scheduler = diffusers_scheduler_class(spec["class"]).from_config(spec["config"])
    mismatches = {key: [value, scheduler.config.get(key)] for key, value in spec["config"].items()
                  if _plain(scheduler.config.get(key)) != _plain(value)}
    if type(scheduler).__name__ != spec["class"]:  # diffusers keeps another class's keys in the config unchanged
        mismatches["class"] = [spec["class"], type(scheduler).__name__]
    # No text encoder or tokenizer: the contexts come encoded, as prompt_embeds / negative_prompt_embeds.
    pipe = diffusers.StableDiffusionPipeline(vae=vae.eval(), text_encoder=None, tokenizer=None, unet=unet.eval(),
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, mismatches


def diffusers_scheduler_class(mindone_class: str):
    """The diffusers scheduler of the same name as the MindONE one (MindONE mirrors diffusers' classes)."""
    import diffusers

    return getattr(diffusers, mindone_class)


def _plain(value):
    """Config values as JSON gives them back (tuples as lists), for comparing."""
    return json.loads(json.dumps(value))


def diffusers_images(pipe, inputs: dict[str, np.ndarray], settings: GenerateConfig) -> np.ndarray:
    """diffusers' loop end to end on the shared inputs: images ``(K*M, H, W, 3)`` float32 in [0, 1]."""
    import torch

    cond = torch.from_numpy(inputs["cond"])
    uncond = torch.from_numpy(np.broadcast_to(inputs["uncond"], inputs["cond"].shape).copy())
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=torch.from_numpy(inputs["latents"]),
                num_inference_steps=settings.steps, guidance_scale=settings.guidance, output_type="np").images


def check_diffusers(cfg: PMGConfig, settings: GenerateConfig, data: Path) -> dict:
    """diffusers' images on the dump's inputs against MindSpore's: the parity record (``passed``)."""
    import torch

    torch.set_num_threads(threads(cfg))
    pipe, mismatches = build_diffusers(cfg, data)
    inputs = dict(np.load(data / "inputs.npz"))
    images = diffusers_images(pipe, inputs, settings)
    ours = inputs["images"]
    if images.shape != ours.shape:
        return dict(role="parity", passed=False, error=f"image shapes differ: {images.shape} vs {ours.shape}")
    diff = float(np.abs(images - ours).max())
    as_uint8 = lambda x: np.round(np.clip(x, 0, 1) * 255).astype(np.int16)  # noqa: E731 - numpy_to_pil's rounding
    levels = np.abs(as_uint8(images) - as_uint8(ours))
    passed = diff <= ATOL and int(levels.max()) <= 1 and not mismatches
    return dict(role="parity", passed=passed, max_abs_diff=diff, uint8_max_diff=int(levels.max()),
                uint8_differing=float((levels > 0).mean()), pixel_std=float(ours.std()),
                scheduler_mismatches=mismatches, scheduler_class=type(pipe.scheduler).__name__)


def run_diffusers(cfg: PMGConfig, settings: GenerateConfig, data: Path, calls: int, warmup: int) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(threads(cfg))
    started = time.perf_counter()
    pipe, _ = build_diffusers(cfg, data)
    inputs = dict(np.load(data / "inputs.npz"))
    build_s = time.perf_counter() - started
    images, times = timed_calls(lambda: diffusers_images(pipe, inputs, settings), calls, warmup)
    return summary(times, warmup, build_s, images, inputs["images"], framework="pytorch", mode="eager",
                   threads=torch.get_num_threads(),
                   version=f"torch {torch.__version__} diffusers {diffusers.__version__}")


def worker(args: argparse.Namespace) -> None:
    data = Path(args.data)
    cfg = bench_config(args.size, worker_sets(args), str(data / "output"))
    settings = generate_settings(args, args.scheduler)
    result = {"ms-dump": lambda: dump_mindspore(cfg, settings, data),
              "pt-parity": lambda: check_diffusers(cfg, settings, data),
              "ms-graph": lambda: run_mindspore(cfg, settings, data, args.calls, args.warmup),
              "pt-eager": lambda: run_diffusers(cfg, settings, data, args.calls, args.warmup)}[args.worker]()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------
def worker_sets(args: argparse.Namespace) -> list[str]:
    return [*args.set, f"runtime.num_threads={args.threads}"] if args.threads else list(args.set)


def worker_command(args: argparse.Namespace, role: str, size: str, scheduler: str, data: Path) -> list[str]:
    """The command line of one worker process (tests run the workers this way too)."""
    return [sys.executable, str(Path(__file__).resolve()), "--worker", role, "--size", size, "--scheduler", scheduler,
            "--data", str(data), "--steps", str(args.steps), "--guidance", str(args.guidance),
            "--weight-sets", str(args.weight_sets), "--images-per-set", str(args.images_per_set),
            "--calls", str(args.calls), "--warmup", str(args.warmup)] + \
        [x for s in worker_sets(args) for x in ("--set", s)]


def launch(args: argparse.Namespace, role: str, size: str, scheduler: str, data: Path) -> dict:
    """Run one worker in a fresh interpreter; its RESULT plus wall time and load, or the error."""
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="ignore")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        proc = subprocess.run(worker_command(args, role, size, scheduler, data), cwd=data, env=env,
                              capture_output=True, text=True, timeout=args.timeout)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        record = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else \
            dict(error=(proc.stderr or proc.stdout)[-3000:], returncode=proc.returncode)
    except subprocess.TimeoutExpired:
        record = dict(error=f"timed out after {args.timeout:.0f} s", returncode=None)
    record.update(run=role, size=size, scheduler=scheduler, wall_s=round(time.perf_counter() - started, 1),
                  loadavg_before=round(load, 2), loadavg_after=round(os.getloadavg()[0], 2))
    return record


def describe(record: dict) -> str:
    """One progress line for a finished run."""
    where, role = f"{record['size']} {record['scheduler']}", record["run"]
    if "error" in record:
        return f"{where} {role}: FAILED (exit {record.get('returncode')}):\n{record['error'][-1500:]}"
    if role == "ms-dump":
        return (f"{where} {role}: {record['shape'][0]} candidates of {record['shape'][1]}x{record['shape'][2]}, "
                f"pixel std {record['pixel_std']:.3f} ({record['wall_s']} s)")
    if role == "pt-parity":
        return (f"{where} parity {'passed' if record['passed'] else 'FAILED'}: max |diff| "
                f"{record['max_abs_diff']:.1e} (<= {ATOL:g}), uint8 max {record['uint8_max_diff']} level(s), "
                f"{100 * record['uint8_differing']:.2f} % of uint8 values differ; diffusers scheduler "
                f"{record['scheduler_class']}"
                + (f", config differs: {record['scheduler_mismatches']}" if record["scheduler_mismatches"] else ""))
    return (f"{where} {role} round {record['round']}: build {record['build_s']:.1f} s, first call "
            f"{record['first_call_s']:.2f} s, median {record['median_s']:.4f} s/call over {record['n']}, peak RSS "
            f"{record['peak_rss_mb']:.0f} MB, max |diff| to the dump {record['max_abs_diff']:.1e}, wall "
            f"{record['wall_s']} s, load {record['loadavg_before']}->{record['loadavg_after']}")


def report(records: list[dict], combos: list[tuple[str, str]]) -> bool:
    """Print the table and the ratios; False if a timed run's images left the tolerance."""
    print("\n| side | size | scheduler | build s (median) | first call s (per round) | median s/call (per round) | "
          "candidates/s | peak RSS MB | max abs diff to MindSpore's images |")
    print("|---|---|---|---|---|---|---|---|---|")
    medians: dict[tuple[str, str, str], list[float]] = {}
    within = True
    for size, scheduler in combos:
        for side in SIDES:
            runs = [r for r in records if (r["size"], r["scheduler"], r["run"]) == (size, scheduler, side)]
            done = [r for r in runs if "median_s" in r]
            if not done:
                if runs:
                    print(f"| {side} | {size} | {scheduler} | failed: {runs[0].get('error', '?')[-200:]!r} "
                          "| | | | | |")
                continue
            per_round = [r["median_s"] for r in done]
            medians[(size, scheduler, side)] = per_round
            mid, worst = statistics.median(per_round), max(r["max_abs_diff"] for r in done)
            firsts = ", ".join(f"{r['first_call_s']:.2f}" for r in done)
            within = within and worst <= ATOL
            print(f"| {side} | {size} | {scheduler} | {statistics.median(r['build_s'] for r in done):.1f} | "
                  f"{firsts} | {mid:.4f} "
                  f"({', '.join(f'{m:.4f}' for m in per_round)}) | {done[0]['candidates'] / mid:.1f} | "
                  f"{max(r['peak_rss_mb'] for r in done):.0f} | {worst:.1e} |")
    pairs = [c for c in combos if all((*c, side) in medians for side in SIDES)]
    if pairs:
        print("\nratio of candidates/s, MindSpore graph / diffusers eager (of the medians over rounds; in brackets, "
              "the same ratio within each round):")
    for size, scheduler in pairs:
        ms_runs, pt_runs = medians[(size, scheduler, "ms-graph")], medians[(size, scheduler, "pt-eager")]
        ratio = statistics.median(pt_runs) / statistics.median(ms_runs)
        rounds = [pt / ms for ms, pt in zip(ms_runs, pt_runs)]
        first = {side: statistics.median(r["first_call_s"] for r in records if (r["size"], r["scheduler"], r["run"])
                                         == (size, scheduler, side) and "first_call_s" in r) for side in SIDES}
        print(f"  {size} {scheduler}: ms-graph / pt-eager = {ratio:.2f} [rounds: {min(rounds):.2f}-"
              f"{max(rounds):.2f}]; first call (compile) {first['ms-graph']:.1f} s vs {first['pt-eager']:.1f} s")
    return within


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny", help=f"comma-separated, from {', '.join(SIZES)}")
    p.add_argument("--schedulers", default="dpm_solver", help=f"comma-separated, from {', '.join(SCHEDULERS)} "
                   "(default: the generate stage's)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--weight-sets", type=int, default=3, help=f"K, the first K of {WEIGHT_SETS}")
    p.add_argument("--images-per-set", type=int, default=2, help="M; one call denoises K x M candidates")
    p.add_argument("--calls", type=int, default=5, help="timed calls per run, after warm-up")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs both sides once, alternating the order")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of both frameworks (runtime.num_threads); 0: every core")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every size (repeatable)")
    p.add_argument("--parity-only", action="store_true", help="check parity, time nothing")
    p.add_argument("--out", help="append one JSON line per run to this file")
    p.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    p.add_argument("--worker", choices=["ms-dump", "pt-parity", *SIDES], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--scheduler", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    if min(args.calls, args.repeats) < 1 or args.warmup < 0 or not 1 <= args.weight_sets <= len(WEIGHT_SETS):
        p.error(f"--calls and --repeats must be >= 1, --warmup >= 0, --weight-sets in [1, {len(WEIGHT_SETS)}]")
    sizes, schedulers = args.sizes.split(","), args.schedulers.split(",")
    for name, chosen, known in (("size", sizes, SIZES), ("scheduler", schedulers, SCHEDULERS)):
        if unknown := [x for x in chosen if x not in known]:
            p.error(f"unknown {name} {unknown[0]!r}; choose from {', '.join(known)}")
    try:  # bad overrides and settings fail here, not in a subprocess
        for size in sizes:
            bench_config(size, worker_sets(args), "output")
        generate_settings(args, schedulers[0])
    except ConfigError as exc:
        p.error(str(exc))
    combos = [(size, scheduler) for size in sizes for scheduler in schedulers]
    k, m = args.weight_sets, args.images_per_set
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
          + (" -- NOTE: the machine was loaded; expect noisy times" if load[0] > LOADED else ""))
    print(f"sizes {sizes}, schedulers {schedulers}: {k} weight sets x {m} images = {k * m} candidates per call "
          f"(UNet batch {2 * k * m} with guidance {args.guidance:g}), {args.steps} steps; "
          + ("parity only" if args.parity_only else f"{args.repeats} rounds of {args.calls} timed calls after "
                                                   f"{args.warmup} warm-up")
          + f"; threads {args.threads or f'{os.cpu_count()} (every core)'} on both sides\n", flush=True)
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    records: list[dict] = []

    def run(role: str, size: str, scheduler: str, data: Path) -> dict:
        record = launch(args, role, size, scheduler, data)
        record.update(round=sum(1 for r in records if (r["size"], r["scheduler"], r["run"]) ==
                                (size, scheduler, role)) + 1, overrides=worker_sets(args), steps=args.steps,
                      candidates_per_call=k * m)
        records.append(record)
        if out:
            out.write(json.dumps(record) + "\n")
            out.flush()
        print(describe(record), flush=True)
        return record

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-generate-diffusers-") as tmp:
        for size, scheduler in combos:
            data = Path(tmp) / f"{size}-{scheduler}"
            data.mkdir()
            if "error" in run("ms-dump", size, scheduler, data):
                continue
            if not run("pt-parity", size, scheduler, data).get("passed") or args.parity_only:
                continue
            for round_ in range(args.repeats):
                for side in (SIDES if round_ % 2 == 0 else SIDES[::-1]):
                    run(side, size, scheduler, data)
    if out:
        out.close()
    within = args.parity_only or report(records, combos)
    parity = {(r["size"], r["scheduler"]): r for r in records if r["run"] == "pt-parity"}
    print(f"\nparity (diffusers on MindSpore's weights, contexts and latents; images within {ATOL:g} of the [0, 1] "
          "range, uint8 within 1 level):")
    for size, scheduler in combos:
        r = parity.get((size, scheduler))
        print(f"  {size} {scheduler}: " + ("not checked (see the errors above)" if r is None or "max_abs_diff" not in r
                                           else f"{'passed' if r['passed'] else 'FAILED'}; max |diff| "
                                                f"{r['max_abs_diff']:.1e}, uint8 max {r['uint8_max_diff']}"))
    if not within:
        print(f"FAILED: a timed run's first images are more than {ATOL:g} from the dump's (see the table)")
    end = os.getloadavg()
    print(f"total {time.perf_counter() - started:.0f} s; load average at start {load[0]:.2f}, at end {end[0]:.2f}"
          + (" (machine loaded: times are indicative only)" if max(load[0], end[0]) > LOADED else ""))
    passed = len(parity) == len(combos) and all(r.get("passed") for r in parity.values())
    return 0 if passed and within and not any("error" in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
