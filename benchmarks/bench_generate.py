"""Candidates per second: batched generation (this project) vs the official sequential loop, tiny models, one run.

    python benchmarks/bench_generate.py [--samples 3] [--weight-sets 3] [--images-per-set 2] [--steps 10]

Both paths generate the same candidates (same contexts, seeds, tiny configs/tiny.yaml models, DDIM, guidance
7.5) and score them with CLIP:

- batched: per sample, the prompts encoded once and all K x M candidates in one UNet batch (micro-batch =
  K x M); CLIP loaded once per run;
- sequential, as the official demo (main.py ``generateImage`` / inference.py ``clipWork``): one pipeline call
  per candidate (prompt and negative prompt encoded, batch 1 with guidance), then CLIP loaded from disk again
  for every selection.

One sample per path runs first as a warm-up (graph compilation of the fixed shapes is a one-time cost of
either path). The official reload also recompiles CLIP's graph on every selection; that is part of its
cost, and the breakdown below shows generation and CLIP separately. Prints candidates/s of each path and
their ratio. Everything is written under a temporary folder.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.pmg.config import ClipConfig, RuntimeConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=3, help="timed samples per path (after one warm-up sample)")
    p.add_argument("--weight-sets", type=int, default=3, help="K (the first K of 1,1 1,2 2,1 2,2 1,3 3,1 ...)")
    p.add_argument("--images-per-set", type=int, default=2, help="M")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    args = p.parse_args()
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

    results = {}
    for name, fn in (("batched", batched), ("sequential", sequential)):
        fn(samples[0])  # warm-up: compiles this path's shapes
        t = time.perf_counter()
        outs = [fn(s) for s in samples[1:]]
        total = time.perf_counter() - t
        gen = sum(o[2] for o in outs)
        results[name] = (total, gen, outs)

    b_total, b_gen, b_outs = results["batched"]
    s_total, s_gen, s_outs = results["sequential"]
    b_total += load_once  # the batched path's one CLIP load is part of its run
    same = all(np.abs(x[0].astype(int) - y[0]).max() <= 1 and x[1] == y[1] for x, y in zip(b_outs, s_outs))
    cands = args.samples * n
    print(f"tiny models, {args.mode} mode, {args.samples} samples x {k} weight sets x {m} images = {cands} candidates, "
          f"{args.steps} DDIM steps, guidance {gcfg.guidance}")
    print(f"  batched:    {cands / b_total:8.2f} candidates/s  (generation {b_gen:.2f} s, CLIP scoring "
          f"{b_total - b_gen - load_once:.2f} s, CLIP loaded once {load_once:.2f} s)")
    print(f"  sequential: {cands / s_total:8.2f} candidates/s  (generation {s_gen:.2f} s, CLIP reload + scoring "
          f"{s_total - s_gen:.2f} s)")
    print(f"  ratio batched / sequential: {s_total / b_total:.1f}x overall, {s_gen / b_gen:.1f}x generation alone; "
          f"same images and choices: {same}")


if __name__ == "__main__":
    main()
