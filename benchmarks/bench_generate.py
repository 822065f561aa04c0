"""Candidates per second: batched generation (this project) vs the official sequential loop, tiny models.

    python benchmarks/bench_generate.py [--samples 3] [--weight-sets 3] [--images-per-set 2] [--steps 10] [--repeats 3]

Both paths generate the same candidates (same contexts, seeds, tiny configs/tiny.yaml models, DDIM, guidance
7.5) and score them with CLIP:

- batched: per sample, the prompts encoded once and all K x M candidates in one UNet batch (micro-batch =
  K x M); CLIP loaded once per run;
- sequential, as the official demo (main.py ``generateImage`` / inference.py ``clipWork``): one pipeline call
  per candidate (prompt and negative prompt encoded, batch 1 with guidance), then CLIP loaded from disk again
  for every selection.

One sample per path runs first as a warm-up (graph compilation of the fixed shapes is a one-time cost of
either path). The official reload also recompiles CLIP's graph on every selection; that is part of its
cost, and the breakdown below shows generation and CLIP separately. The models are built once per process;
then ``--repeats`` rounds each time both paths on the same ``--samples`` samples, the path that goes first
alternating between rounds, so a slow drift of the machine's load hits both alike. The batched path's one CLIP
load is timed once, before the rounds, and added to each round's batched time. Prints each round, then
candidates/s of each path (the median over rounds) and their ratios: the ratio of the medians, with the same
ratio within each round as a range in brackets. Everything is written under a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rounds import spread  # noqa: E402
from research.pmg.config import ClipConfig, RuntimeConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=3, help="timed samples per path (after one warm-up sample)")
    p.add_argument("--weight-sets", type=int, default=3, help="K (the first K of 1,1 1,2 2,1 2,2 1,3 3,1 ...)")
    p.add_argument("--images-per-set", type=int, default=2, help="M")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds; each times both paths once, the one that goes first alternating")
    args = p.parse_args()
    if min(args.samples, args.repeats) < 1:
        p.error("--samples and --repeats must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        run(Path(tmp), args)


def run(tmp: Path, args) -> None:
    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(RuntimeConfig(device="CPU", mode=args.mode, seed=0, output_dir=str(tmp)))

    from research.pmg.generate.conditioning import candidate_contexts, unconditional_context
    from research.pmg.generate.pipeline import GenerationPipeline, to_uint8
    from research.pmg.generate.run import generation_scheduler
    from research.pmg.config.generate import GenerateConfig
    from research.pmg.generate.scorer import ClipScorer, clip_image_processor
    from research.pmg.models import build_clip_parts, build_diffusion_parts, resolve_tokenizers
    from research.pmg.models.clip import build_clip
    from research.pmg.models.conditioning import encode_texts

    pairs = [[1, 1], [1, 2], [2, 1], [2, 2], [1, 3], [3, 1], [2, 3], [3, 2]][:args.weight_sets]
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"runtime.output_dir={tmp}"])
    tokenizers = resolve_tokenizers(cfg, runtime)
    gcfg = GenerateConfig(weight_sets=pairs, images_per_set=args.images_per_set, steps=args.steps, scheduler="ddim")
    sd = build_diffusion_parts(cfg, runtime, tokenizers)
    clip = build_clip_parts(cfg, runtime, tokenizers)
    clip_dir = tmp / "clip"  # what the sequential loop reloads from disk on every selection
    clip.model.save_pretrained(str(clip_dir))
    for f in Path(tokenizers.clip).iterdir():
        shutil.copy(f, clip_dir / f.name)

    k, m = len(pairs), args.images_per_set
    n = k * m
    scheduler = generation_scheduler(cfg, gcfg)
    batched_pipe = GenerationPipeline(sd, scheduler, steps=args.steps, guidance=gcfg.guidance, micro_batch=n)
    single_pipe = GenerationPipeline(sd, scheduler, steps=args.steps, guidance=gcfg.guidance, micro_batch=1)
    max_length = cfg.models.diffusion.tokenizer_max_length
    encode = lambda texts: encode_texts(sd.text_encoder, sd.tokenizer, texts, max_length)  # noqa: E731
    samples = []
    for i in range(args.samples + 1):
        target, preference = f"bear face, animals, sticker {i}", f"cat, frog, cartoon, cute, style {i}"
        latents = batched_pipe.initial_latents([(0, i, ki, mi) for ki in range(k) for mi in range(m)])
        samples.append((target, preference, latents))
    negative = gcfg.negative_for("stickers")

    t0 = time.perf_counter()
    parts = build_clip(ClipConfig(path=str(clip_dir)), runtime)  # the batched path loads CLIP once per run
    scorer = ClipScorer(parts, clip_image_processor(parts, clip_dir))
    load_once = time.perf_counter() - t0

    def batched(sample):
        target, preference, latents = sample
        t = time.perf_counter()
        cond = np.repeat(candidate_contexts(encode, target, preference, None, pairs, "scaling"), m, axis=0)
        images = to_uint8(batched_pipe(cond, unconditional_context(encode, negative), latents))
        t_gen = time.perf_counter() - t
        return images, scorer.choose(images, preference, target).chosen, t_gen

    def sequential(sample):
        target, preference, latents = sample
        t = time.perf_counter()
        images = []
        for j in range(n):  # one pipeline call per candidate, prompts encoded by each call
            cond = candidate_contexts(encode, target, preference, None, [pairs[j // m]], "scaling")
            images.append(to_uint8(single_pipe(cond, unconditional_context(encode, negative), latents[j:j + 1])))
        images = np.concatenate(images)
        t_gen = time.perf_counter() - t
        parts = build_clip(ClipConfig(path=str(clip_dir)), runtime)  # clipWork: CLIP loaded again per selection
        reloaded = ClipScorer(parts, clip_image_processor(parts, clip_dir))
        return images, reloaded.choose(images, preference, target).chosen, t_gen

    for fn in (batched, sequential):
        fn(samples[0])  # warm-up: compiles this path's shapes (not timed, once per process)

    load = os.getloadavg()
    cands = args.samples * n
    print(f"tiny models, {args.mode} mode, {args.samples} samples x {k} weight sets x {m} images = {cands} candidates, "
          f"{args.steps} DDIM steps, guidance {gcfg.guidance}")
    print(f"{args.repeats} round(s), the path that goes first alternating; {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; CLIP loaded once {load_once:.2f} s, added to each "
          "round's batched time")
    paths = [("batched", batched), ("sequential", sequential)]
    rounds: list[dict[str, tuple[float, float, list]]] = []  # per round, path -> (total s, generation s, outputs)
    for round_ in range(args.repeats):
        order = paths if round_ % 2 == 0 else paths[::-1]
        results = {}
        for name, fn in order:
            t = time.perf_counter()
            outs = [fn(s) for s in samples[1:]]
            total = time.perf_counter() - t
            results[name] = (total + (load_once if name == "batched" else 0.0), sum(o[2] for o in outs), outs)
        rounds.append(results)
        (b_total, b_gen, _), (s_total, s_gen, _) = results["batched"], results["sequential"]
        print(f"  round {round_ + 1} ({order[0][0]} first): batched {cands / b_total:.2f} candidates/s (generation "
              f"{b_gen:.2f} s), sequential {cands / s_total:.2f} candidates/s (generation {s_gen:.2f} s); ratio "
              f"{s_total / b_total:.1f}x overall, {s_gen / b_gen:.1f}x generation alone; load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)

    def per_round(path: str, what: int) -> list[float]:
        return [r[path][what] for r in rounds]

    def rates(path: str, what: int) -> list[float]:  # candidates/s over the total (0) or generation alone (1)
        return [cands / x for x in per_round(path, what)]

    def ratio(what: int, name: str) -> str:
        """batched / sequential candidates/s: the ratio of the medians, the per-round range in brackets."""
        b, s = rates("batched", what), rates("sequential", what)
        within = [x / y for x, y in zip(b, s)]
        return f"{statistics.median(b) / statistics.median(s):.1f}x {name} [{spread(within, 1)}]"

    med = statistics.median
    b_gen, s_gen = med(per_round("batched", 1)), med(per_round("sequential", 1))
    b_clip = med(t - g - load_once for t, g in zip(per_round("batched", 0), per_round("batched", 1)))
    s_clip = med(t - g for t, g in zip(per_round("sequential", 0), per_round("sequential", 1)))
    same = all(np.abs(x[0].astype(int) - y[0]).max() <= 1 and x[1] == y[1]
               for r in rounds for x, y in zip(r["batched"][2], r["sequential"][2]))
    print(f"median over {args.repeats} round(s):")
    print(f"  batched:    {med(rates('batched', 0)):8.2f} candidates/s  (generation {b_gen:.2f} s, CLIP scoring "
          f"{b_clip:.2f} s, CLIP loaded once {load_once:.2f} s)")
    print(f"  sequential: {med(rates('sequential', 0)):8.2f} candidates/s  (generation {s_gen:.2f} s, CLIP reload + "
          f"scoring {s_clip:.2f} s)")
    print(f"  ratio batched / sequential: {ratio(0, 'overall')}, {ratio(1, 'generation alone')}; medians of "
          f"{args.repeats} round(s); same images and choices: {same}; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
