"""Command line of the keyword stage.

    python -m research.pmg.keywords --config configs/tiny.yaml
    python -m research.pmg.keywords --config configs/movielens.yaml --data output/movielens/data \
        --set keywords.integrate=true
    bash scripts/run_keywords.sh --nproc 8 --config configs/pog.yaml    # msrun, 8 data-parallel workers

Settings: the config's ``keywords:`` section, changed with ``--set``; paths from research/pmg/layout.py.
Bad input ends with one line ``error: ...`` on stderr and exit code 2; the output file is written whole or not
at all, and answers already generated stay in the cache for the next run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script (msrun runs a file, not a module)
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from research.pmg.cli import ArgumentParser, add_config_args, add_field_flag, config_from_args, run  # noqa: E402
from research.pmg.config.keywords import KeywordsConfig  # noqa: E402
from research.pmg.layout import Layout  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.keywords",
                       description="Extract preference and target keywords of every sample with the frozen LLM "
                                   "(research/pmg/keywords/README.md). Settings: the keywords: section of the "
                                   "config, changed with --set keywords.<field>=VALUE (see configs/ and "
                                   "research/pmg/config/keywords.py).")
    add_config_args(p)
    add_field_flag(p, "--data", "keywords.data", "prepared dataset folder", metavar="DIR")
    add_field_flag(p, "--out", "keywords.out", "keywords file", metavar="FILE")
    p.add_argument("--show-prompts", type=int, metavar="N",
                   help="print the prompts of the first N samples and exit (no LLM is loaded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    kcfg = cfg.keywords
    layout = Layout.of(cfg)

    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    data_dir, out, cache_dir = layout.keywords_data, layout.keywords, layout.keywords_cache

    if args.show_prompts is not None:
        return show_prompts(cfg, kcfg, runtime, data_dir, args.show_prompts)

    from research.pmg import ownership
    from research.pmg.keywords.extract import extract_keywords
    from research.pmg.records.keywords import summary_path

    rank, world = runtime.rank, runtime.world_size  # msrun workers: setup_runtime joined the job
    # Only a keywords file this stage wrote (its summary beside it) is replaced, and only a cache folder of this
    # stage's is appended to; the cache locks each worker's part file itself, so two runs on one cache cannot mix.
    ownership.check_file(out, summary_path(out))
    with ownership.claim(cache_dir, "keywords", lock=False):
        summary, stats = extract_keywords(cfg, kcfg, runtime, data_dir=data_dir, out=out, cache_dir=cache_dir,
                                          rank=rank, world=world, progress=not args.no_progress)
    if summary is not None:
        counts = summary["counts"]
        answers = ", ".join(f"{k} {v}" for k, v in counts["answers"].items())
        print(f"keywords: {counts['samples']} samples (ok {counts['ok']}, partial {counts['partial']}, "
              f"failed {counts['failed']}) -> {out}")
        print(f"  answers: {answers}")
        if kcfg.integrate:
            print("  integrate: " + ", ".join(f"{k} {v}" for k, v in counts["integrate"].items()))
        print(f"  worker {rank} of {world}: {stats.prompts} prompts, {stats.cached} cached, "
              f"{stats.generated} generated; cache {cache_dir}")
    return 0


def show_prompts(cfg, kcfg: KeywordsConfig, runtime, data_dir: Path, n: int) -> int:
    """Print the rendered prompts of the first ``n`` selected samples (needs only the tokenizer)."""
    from research.pmg.records.samples import load_prepared
    from research.pmg.keywords.engine import KeywordLLM
    from research.pmg.keywords.extract import select_samples
    from research.pmg.keywords.prompts import PromptBuilder, load_templates, resolve_templates

    templates = load_templates(resolve_templates(kcfg.templates, cfg.scenario))
    data = load_prepared(data_dir)
    llm = KeywordLLM(cfg, kcfg, runtime)
    builder = PromptBuilder(templates, kcfg.chat_format, per_attribute=kcfg.per_attribute,
                            max_item_chars=kcfg.max_item_chars, count_tokens=llm.count_tokens, budget=llm.budget)
    for sample in select_samples(data, kcfg)[:n]:
        for kind, prompts in (("preference", builder.preference(sample, data.items)),
                              ("target", builder.target(data.items[sample.target]))):
            for prompt in prompts:
                print(f"===== sample {sample.id} {kind} {prompt.attribute} ({llm.count_tokens(prompt.text)} tokens)")
                print(prompt.text)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
