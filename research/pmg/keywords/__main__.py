"""Command line of the keyword stage.

    python -m research.pmg.keywords --config configs/tiny.yaml
    python -m research.pmg.keywords --config configs/movielens.yaml --data output/movielens/data --integrate
    bash scripts/run_keywords.sh --nproc 8 --config configs/pog.yaml    # msrun, 8 data-parallel workers

Settings: defaults, then the config's ``keywords:`` section (once PMGConfig has one) and ``--set``, then flags.
Bad input ends with one line ``error: ...`` on stderr and exit code 2; the output file is written whole or not
at all, and answers already generated stay in the cache for the next run.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script (msrun runs a file, not a module)
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run  # noqa: E402
from research.pmg.config.keywords import CHAT_FORMAT_NAMES, SPLITS, KeywordsConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.keywords",
                description="Extract preference and target keywords of every sample with the frozen LLM "
                            "(research/pmg/keywords/README.md).")
    add_config_args(p)
    p.add_argument("--data", help="prepared dataset folder (default: data.out or <runtime.output_dir>/data)")
    p.add_argument("--out", help="keywords file (default: <runtime.output_dir>/keywords/keywords.jsonl)")
    p.add_argument("--cache", help="answer cache folder (default: <runtime.output_dir>/keywords/cache)")
    p.add_argument("--templates", help="prompt set: name under configs/prompts/ or a YAML file "
                                       "(default: the scenario's)")
    p.add_argument("--chat-format", choices=CHAT_FORMAT_NAMES, help="prompt wrapper (default llama2: [INST] <<SYS>>)")
    p.add_argument("--num-preference", type=int, help="N preference keywords (default 8)")
    p.add_argument("--num-target", type=int, help="N target keywords (default 10)")
    p.add_argument("--per-attribute", type=int, help="keywords asked for per attribute (default 5)")
    p.add_argument("--integrate", action=argparse.BooleanOptionalAction, default=None,
                   help="let the LLM pick the N most distinctive merged keywords (default off)")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default 64)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call (default 8)")
    p.add_argument("--kv-cache", dest="use_past", action=argparse.BooleanOptionalAction, default=None,
                   help="incremental inference with a KV cache (default on)")
    p.add_argument("--splits", help=f"comma-separated subset of {','.join(SPLITS)} (default all)")
    p.add_argument("--max-samples", type=int, help="first N selected samples only (default 0 = all)")
    p.add_argument("--model-id", help="cache identity of the LLM (default: derived from models.llm)")
    p.add_argument("--show-prompts", type=int, metavar="N",
                   help="print the prompts of the first N samples and exit (no LLM is loaded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_FLAG_FIELDS = ("data", "out", "cache", "templates", "chat_format", "num_preference", "num_target", "per_attribute",
                "integrate", "max_new_tokens", "batch_size", "use_past", "max_samples", "model_id")


def keywords_config(cfg, args: argparse.Namespace) -> KeywordsConfig:
    """Defaults < the config's ``keywords:`` section < flags; validated once."""
    base = cfg.keywords
    changes = {name: getattr(args, name) for name in _FLAG_FIELDS if getattr(args, name) is not None}
    if args.splits is not None:
        changes["splits"] = [s.strip() for s in args.splits.split(",") if s.strip()]
    kcfg = dataclasses.replace(base, **changes)
    kcfg.validate("keywords.")
    return kcfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    kcfg = keywords_config(cfg, args)

    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    output_dir = runtime.output_dir
    data_dir = Path(kcfg.data or cfg.data.out or output_dir / "data")
    out = Path(kcfg.out or output_dir / "keywords" / "keywords.jsonl")
    cache_dir = Path(kcfg.cache or output_dir / "keywords" / "cache")

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
