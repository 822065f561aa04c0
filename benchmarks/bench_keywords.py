"""Keyword extraction throughput on the tiny Llama (CPU): naive one-by-one vs batched + KV cache + answer cache.

    python benchmarks/bench_keywords.py                       # 8 sticker samples, 32 new tokens, batch 8
    python benchmarks/bench_keywords.py --samples 16 --max-new-tokens 64 --batch-size 16

The workload is the real one of the bundled sticker sample: every preference and target prompt of the first
``--samples`` samples (targets repeat across samples, as in real data). Each variant gets its model built
and its graphs compiled on a warm-up prompt first, so the times are steady-state generation (the short
variants take the best of three runs, as the machine may be shared):

- naive: one prompt per ``generate`` call, full recompute each step (no KV cache), every prompt asked;
- batched: ``--batch-size`` prompts per call, no KV cache;
- batched + KV cache: the same with ``use_past`` (MindFormers incremental inference);
- batched + KV cache + answer cache: the extraction stage itself (identical prompts asked once), first run;
- re-run: the same extraction again, all answers from the cache (no model is even built).

Prints prompts per second for each and the ratio of the full stage to the naive loop.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.pmg.config import load_config  # noqa: E402
from research.pmg.config.data import DataConfig  # noqa: E402
from research.pmg.config.keywords import KeywordsConfig  # noqa: E402
from research.pmg.data.prepare import prepare  # noqa: E402
from research.pmg.records.samples import load_prepared  # noqa: E402
from research.pmg.runtime import setup_runtime  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=512, help="tiny Llama context (sticker prompts need ~430)")
    args = parser.parse_args()

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
    print(f"workload: {len(samples)} sticker samples, {len(prompts)} prompts ({len(set(prompts))} distinct), "
          f"{args.max_new_tokens} new tokens each, tiny Llama, seq_length {args.seq_length}, CPU")

    rates = {}

    def timed(name: str, engine: KeywordLLM, run, repeat: int = 1) -> None:
        engine.generate(prompts[:1])  # build the model, compile its graphs
        elapsed = float("inf")
        for attempt in range(repeat):  # best of: the machine may be shared
            start = time.perf_counter()
            run(attempt)
            elapsed = min(elapsed, time.perf_counter() - start)
        rates[name] = len(prompts) / elapsed
        print(f"  {name:<38} {elapsed:7.2f} s  {rates[name]:7.2f} prompts/s")

    naive = KeywordLLM(cfg, replace(kcfg, batch_size=1, use_past=False), runtime)
    timed("naive (one by one, no KV cache)", naive, lambda _: [naive.generate([p]) for p in prompts])
    batched = KeywordLLM(cfg, replace(kcfg, use_past=False), runtime)
    timed("batched, no KV cache", batched, lambda _: batched.generate(prompts))
    kv = KeywordLLM(cfg, kcfg, runtime)
    timed("batched + KV cache", kv, lambda _: kv.generate(prompts), repeat=3)

    def stage(cache_dir: Path, llm: KeywordLLM) -> None:
        with AnswerCache(cache_dir) as cache:
            Extractor(llm, templates, kcfg, cache).run(samples, data.items)

    timed("batched + KV cache + answer cache", kv, lambda attempt: stage(work / f"cache{attempt}", kv), repeat=3)
    rerun = KeywordLLM(cfg, kcfg, runtime)
    start = time.perf_counter()
    stage(work / "cache0", rerun)
    elapsed = time.perf_counter() - start
    assert rerun.prompts_generated == 0
    print(f"  {'re-run, all answers cached':<38} {elapsed:7.2f} s  {len(prompts) / elapsed:7.0f} prompts/s")
    full, base = rates["batched + KV cache + answer cache"], rates["naive (one by one, no KV cache)"]
    print(f"ratio batched+cached / naive: {full / base:.1f}x "
          f"(batching {rates['batched, no KV cache'] / base:.1f}x, "
          f"+ KV cache {rates['batched + KV cache'] / base:.1f}x)")


if __name__ == "__main__":
    main()
