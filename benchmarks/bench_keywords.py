"""Keyword extraction throughput on the tiny Llama (CPU): naive one-by-one vs batched + KV cache + answer cache.

    python benchmarks/bench_keywords.py                       # 8 sticker samples, 32 new tokens, batch 8, 3 rounds
    python benchmarks/bench_keywords.py --samples 16 --max-new-tokens 64 --batch-size 16 --repeats 5

The workload is the real one of the bundled sticker sample: every preference and target prompt of the first
``--samples`` samples (targets repeat across samples, as in real data). Each variant's model is built and its
graphs compiled on a warm-up prompt first, once per process, so the times are steady-state generation:

- naive: one prompt per ``generate`` call, full recompute each step (no KV cache), every prompt asked;
- batched: ``--batch-size`` prompts per call, no KV cache;
- batched + KV cache: the same with ``use_past`` (MindFormers incremental inference);
- batched + KV cache + answer cache: the extraction stage itself (identical prompts asked once), into an empty
  answer cache;
- re-run: the same extraction again right after it, all answers from that cache (no model is even built).

``--repeats`` rounds each time every variant once, on the models built and compiled above; the order of the
variants is reversed every other round, so a slow drift of the machine's load hits them alike. Prints each
round's times, then prompts per second of each variant (the median over rounds, with its per-round range) and
the ratios of those medians, each with its per-round range in brackets (the same ratio within each round).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rounds import spread  # noqa: E402
from research.pmg.config import load_config  # noqa: E402
from research.pmg.config.data import DataConfig  # noqa: E402
from research.pmg.config.keywords import KeywordsConfig  # noqa: E402
from research.pmg.data.prepare import prepare  # noqa: E402
from research.pmg.records.samples import load_prepared  # noqa: E402
from research.pmg.runtime import setup_runtime  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# short name (round lines, ratio lines) -> what it times
LABELS = {"naive": "naive (one by one, no KV cache)", "batched": "batched, no KV cache",
          "batched+kv": "batched + KV cache", "stage": "batched + KV cache + answer cache",
          "re-run": "re-run, all answers cached"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=512, help="tiny Llama context (sticker prompts need ~430)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each times every variant once, the order reversed every other round")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    work = Path(tempfile.mkdtemp(prefix="bench-keywords-"))
    cfg = load_config(REPO / "configs" / "tiny.yaml", [f"runtime.output_dir={work}",
                                                       f"models.llm.seq_length={args.seq_length}"])
    runtime = setup_runtime(cfg.runtime)
    prepare("stickers", DataConfig(out=str(work / "data")), progress=False)

    from research.pmg.keywords.cache import AnswerCache
    from research.pmg.keywords.engine import KeywordLLM
    from research.pmg.keywords.extract import Extractor, select_samples
    from research.pmg.keywords.prompts import PromptBuilder, load_templates, resolve_templates

    data = load_prepared(work / "data")
    kcfg = KeywordsConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, max_samples=args.samples)
    samples = select_samples(data, kcfg)
    templates = load_templates(resolve_templates("", cfg.scenario))
    tokenizer_only = KeywordLLM(cfg, kcfg, runtime)
    builder = PromptBuilder(templates, kcfg.chat_format, per_attribute=kcfg.per_attribute,
                            max_item_chars=kcfg.max_item_chars, count_tokens=tokenizer_only.count_tokens,
                            budget=tokenizer_only.budget)
    prompts = [p.text for s in samples for p in (*builder.preference(s, data.items),
                                                 *builder.target(data.items[s.target]))]
    load = os.getloadavg()
    print(f"workload: {len(samples)} sticker samples, {len(prompts)} prompts ({len(set(prompts))} distinct), "
          f"{args.max_new_tokens} new tokens each, tiny Llama, seq_length {args.seq_length}, CPU")
    print(f"{args.repeats} round(s), the order of the variants reversed every other round; {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")

    naive = KeywordLLM(cfg, replace(kcfg, batch_size=1, use_past=False), runtime)
    batched = KeywordLLM(cfg, replace(kcfg, use_past=False), runtime)
    kv = KeywordLLM(cfg, kcfg, runtime)  # the batched + KV cache variant and the stage share this model
    for engine in (naive, batched, kv):
        engine.generate(prompts[:1])  # build the model, compile its graphs: not timed, once per process

    def stage(cache_dir: Path, llm: KeywordLLM) -> None:
        with AnswerCache(cache_dir) as cache:
            Extractor(llm, templates, kcfg, cache).run(samples, data.items)

    variants = [("naive", lambda _: [naive.generate([p]) for p in prompts]),
                ("batched", lambda _: batched.generate(prompts)),
                ("batched+kv", lambda _: kv.generate(prompts)),
                ("stage", lambda round_: stage(work / f"cache{round_}", kv))]  # a new, empty cache each round
    times: dict[str, list[float]] = {name: [] for name in LABELS}
    for round_ in range(args.repeats):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for name, run in order:
            start = time.perf_counter()
            run(round_)
            times[name].append(time.perf_counter() - start)
            if name == "stage":  # right after it (a fraction of a second): the same extraction, all answers cached
                rerun = KeywordLLM(cfg, kcfg, runtime)
                start = time.perf_counter()
                stage(work / f"cache{round_}", rerun)
                times["re-run"].append(time.perf_counter() - start)
                assert rerun.prompts_generated == 0
        ran = [n for name, _ in order for n in ((name, "re-run") if name == "stage" else (name,))]
        print(f"  round {round_ + 1}: " + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in ran)
              + f"; load average {os.getloadavg()[0]:.2f}", flush=True)

    rates = {name: [len(prompts) / t for t in ts] for name, ts in times.items()}
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"median over {args.repeats} round(s) (in brackets, the per-round range of prompts/s):")
    for name, label in LABELS.items():
        digits = 0 if name == "re-run" else 2
        print(f"  {label:<38} {statistics.median(times[name]):7.2f} s  {median[name]:7.{digits}f} prompts/s  "
              f"[{spread(rates[name], digits)}]")
    print(f"ratios of prompts/s, medians over {args.repeats} round(s) (in brackets, the same ratio within each "
          "round; names as in the round lines above):")
    ratio = {}
    for a, b in (("batched", "naive"), ("batched+kv", "naive"), ("stage", "naive"), ("re-run", "stage")):
        ratio[a] = median[a] / median[b]
        digits = 0 if a == "re-run" else 1
        per_round = [x / y for x, y in zip(rates[a], rates[b])]
        print(f"  {a} / {b} = {ratio[a]:.{digits}f}x [{spread(per_round, digits)}]")
    print(f"ratio batched+cached / naive: {ratio['stage']:.1f}x (batching {ratio['batched']:.1f}x, "
          f"+ KV cache {ratio['batched+kv']:.1f}x); medians of {args.repeats} round(s), load average at end "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
