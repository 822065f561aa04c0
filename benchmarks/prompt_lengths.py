"""Token lengths of PMG's LLM prompts per scenario, and the padding that static length buckets save.

    python benchmarks/prompt_lengths.py --tokenizer weights/llama2-7b-chat/tokenizer.model
    python benchmarks/prompt_lengths.py --tokenizer T --ml100k ~/data/ml-100k --buckets 128,192,256
    python benchmarks/prompt_lengths.py --tokenizer T --data pog=data/POG --data movielens=output/movielens/data

``--tokenizer`` is the Llama 2 ``tokenizer.model`` (the one ckpt_convert reads); it is loaded as every stage
loads it (``research.pmg.models.tokenizers.load_llama_tokenizer``), so a count here is the stage's count, BOS
included. Per config (``--configs``, default the three scenario configs and official_movie.yaml) the script
prepares the scenario's data with that config's ``data`` settings and measures:

- **history**: the bias-correction LLM's input, ``render_history_prompt`` of the sample's history titles, plus
  the L = ``num_mm_tokens`` multimodal tokens appended after it: the sequence the soft-preference encoder runs;
- **keyword preference / keyword target**: the keyword stage's prompts per attribute as ``PromptBuilder``
  renders them with the config's ``keywords`` settings (templates, chat format, item text cut), the target ones
  once per distinct target item. Generation needs room for the answer, so the sequence of a keyword prompt is
  its length plus ``keywords.max_new_tokens``.

Data: ``--data scenario=PATH`` is a prepared dataset folder (with its summary) or raw files in the scenario's
format; ``--ml100k DIR|synthetic`` builds ml-100k as ``bench_data.py`` does (GroupLens or RecBole files;
``synthetic`` has ml-100k's statistics but invented ``Movie N (year)`` titles, so its prompt lengths are not
real ones). Without either, each scenario's bundled sample is used: a few dozen synthetic samples, enough to
see the prompt shape, too few for tails. The output names the data of every row.

Buckets: a sequence runs at the smallest bucket that holds it (``models.llm.seq_length`` is always the last
bucket; longer prompts are cut to it). A micro-batch runs at the bucket of its longest sequence, so the cost per
sample is the expected bucket of the maximum of ``batch`` random samples: exactly, by counting, for batches
drawn uniformly without replacement (:func:`expected_tokens`), and as a check by simulating seeded epochs of
shuffled batches with the incomplete last one dropped, as training draws them (:func:`simulated_tokens`).
Training's batch is ``train.batch_size`` per device; generation's soft-embedding pass runs one sample at a
time (batch 1); the keyword stage fills ``keywords.batch_size`` rows. Bucket sets come from ``--buckets``
(repeatable) and the config's ``models.soft_preference.length_buckets`` when it has one.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("configs/stickers.yaml", "configs/movielens.yaml", "configs/pog.yaml", "configs/official_movie.yaml")
PERCENTILES = (50, 90, 99)


# ---------------------------------------------------------------------------------------------------------------------
# Bucket arithmetic (pure; tests/test_prompt_lengths.py checks it by hand)
# ---------------------------------------------------------------------------------------------------------------------
def bucket_ladder(buckets: Sequence[int], seq_length: int) -> list[int]:
    """The sorted static lengths a sequence may run at: the buckets below ``seq_length``, then ``seq_length``."""
    return sorted({b for b in buckets if 0 < b < seq_length} | {seq_length})


def bucket_of(length: int, ladder: Sequence[int]) -> int:
    """The smallest length in ``ladder`` that holds ``length`` (the last one, which cuts it, when none does)."""
    for b in ladder:
        if length <= b:
            return b
    return ladder[-1]


def batch_tokens(batches: Sequence[Sequence[int]], ladder: Sequence[int]) -> float:
    """Padded tokens per sample when each batch of sequence lengths runs at the bucket of its longest."""
    tokens = sum(len(batch) * bucket_of(max(batch), ladder) for batch in batches)
    return tokens / sum(len(batch) for batch in batches)


def bucket_shares(lengths: Sequence[int], batch: int, ladder: Sequence[int]) -> dict[int, float]:
    """The share of batches of ``batch`` samples, drawn uniformly without replacement, that run at each bucket.

    A batch runs at bucket b_i when its longest sequence needs b_i: P = [C(k_i, B) - C(k_{i-1}, B)] / C(n, B),
    with k_i the number of sequences that fit in b_i.
    """
    n = len(lengths)
    batch = min(batch, n)
    shares, below = {}, 0
    for b in ladder:
        ways = math.comb(sum(1 for x in lengths if bucket_of(x, ladder) <= b), batch)
        shares[b] = (ways - below) / math.comb(n, batch)
        below = ways
    return shares


def expected_tokens(lengths: Sequence[int], batch: int, ladder: Sequence[int]) -> float:
    """Expected padded tokens per sample over batches of ``batch`` samples drawn uniformly without replacement."""
    return sum(b * share for b, share in bucket_shares(lengths, batch, ladder).items())


def simulated_tokens(lengths: Sequence[int], batch: int, ladder: Sequence[int], epochs: int = 200,
                     seed: int = 0) -> float:
    """:func:`batch_tokens` over ``epochs`` seeded shuffles cut into batches (the incomplete last one dropped)."""
    lengths, ladder = np.asarray(lengths), np.asarray(ladder)
    batch = min(batch, len(lengths))
    usable = len(lengths) - len(lengths) % batch
    total = 0.0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(lengths))[:usable]
        longest = lengths[order].reshape(-1, batch).max(axis=1)
        total += ladder[np.minimum(np.searchsorted(ladder, longest), len(ladder) - 1)].mean()
    return total / epochs


def percentiles(lengths: Sequence[int]) -> dict[str, int]:
    """min, nearest-rank percentiles and max."""
    values = np.asarray(lengths)
    out = {"min": int(values.min())}
    out.update({f"p{p}": int(np.percentile(values, p, method="inverted_cdf")) for p in PERCENTILES})
    out["max"] = int(values.max())
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    config: str
    data: str
    seq_length: int
    train_batch: int
    keyword_batch: int
    max_new_tokens: int
    num_mm_tokens: int
    config_buckets: tuple[int, ...]
    history: list[int]  # sequence lengths: prompt tokens + L
    preference: list[int]  # prompt tokens (the answer's room is added where buckets are applied)
    target: list[int]


def prepared_dataset(cfg, spec: str | None, ml100k: str | None, tmp: Path, cache: dict):
    """The config's scenario's samples, prepared with its ``data`` settings; returns (data, description)."""
    from research.pmg.data.prepare import prepare
    from research.pmg.records.samples import SUMMARY_FILE, load_prepared

    scenario = cfg.scenario
    if spec and (Path(spec) / SUMMARY_FILE).is_file():
        return load_prepared(spec), f"prepared {Path(spec).name}"
    if spec:
        raw, what = Path(spec), f"raw {Path(spec).name}"
    elif scenario == "movielens" and ml100k:
        raw = tmp / "ml-100k-raw"
        if not raw.exists():
            from benchmarks.bench_data import write_input  # the benchmark's own builder of ml-100k

            write_input(raw, None if ml100k == "synthetic" else Path(ml100k), seed=0)
        what = "ml-100k synthesised (invented titles)" if ml100k == "synthetic" else f"ml-100k ({Path(ml100k).name})"
    else:
        raw, what = None, "bundled sample"
    data_cfg = dataclasses.replace(cfg.data, raw=str(raw) if raw else "", out="")
    key = (scenario, repr(data_cfg))
    if key not in cache:
        out = tmp / f"prepared-{len(cache)}"
        prepare(scenario, dataclasses.replace(data_cfg, out=str(out)), progress=False)
        cache[key] = load_prepared(out)
    return cache[key], what


def measure(config_path: str, tokenizer, spec: str | None, ml100k: str | None, tmp: Path, cache: dict,
            max_keyword_samples: int, seed: int) -> Measured:
    from research.pmg.config import load_config
    from research.pmg.examples import render_history_prompt
    from research.pmg.keywords.prompts import PromptBuilder, load_templates, resolve_templates

    cfg = load_config(config_path)
    data, what = prepared_dataset(cfg, spec, ml100k, tmp, cache)
    llm, soft, kcfg = cfg.models.llm, cfg.models.soft_preference, cfg.keywords
    count = lambda text: len(tokenizer(text).input_ids)  # noqa: E731  (BOS included, as the stages count)
    history = [count(render_history_prompt([data.items[i].title for i in s.history])) + soft.num_mm_tokens
               for s in data.samples]
    builder = PromptBuilder(load_templates(resolve_templates(kcfg.templates, cfg.scenario)), kcfg.chat_format,
                            per_attribute=kcfg.per_attribute, max_item_chars=kcfg.max_item_chars,
                            count_tokens=count, budget=llm.seq_length - kcfg.max_new_tokens)
    samples, what = data.samples, f"{what}, {len(data.samples)} samples"
    if max_keyword_samples and len(samples) > max_keyword_samples:  # the slow tokenizer: a seeded subset
        pick = np.random.default_rng(seed).choice(len(samples), max_keyword_samples, replace=False)
        samples = [samples[i] for i in sorted(pick)]
        what += f" (keyword prompts: {max_keyword_samples} of them, random)"
    preference = [count(p.text) for s in samples for p in builder.preference(s, data.items)]
    target = [count(p.text) for t in sorted({s.target for s in samples})
              for p in builder.target(data.items[t])]
    return Measured(config=config_path, data=what, seq_length=llm.seq_length,
                    train_batch=cfg.train.batch_size, keyword_batch=kcfg.batch_size,
                    max_new_tokens=kcfg.max_new_tokens, num_mm_tokens=soft.num_mm_tokens,
                    config_buckets=tuple(getattr(soft, "length_buckets", None) or ()),
                    history=history, preference=preference, target=target)


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------
def distribution_table(rows: Sequence[Measured]) -> str:
    lines = ["| config | data | sequence | n | min | median | p90 | p99 | max |", "|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        for name, lengths in ((f"history prompt + L={m.num_mm_tokens}", m.history),
                              ("keyword preference prompt", m.preference), ("keyword target prompt", m.target)):
            q = percentiles(lengths)
            lines.append(f"| {Path(m.config).name} | {m.data} | {name} | {len(lengths)} | {q['min']} | {q['p50']} | "
                         f"{q['p90']} | {q['p99']} | {q['max']} |")
    return "\n".join(lines)


def savings_table(rows: Sequence[Measured], bucket_sets: Sequence[Sequence[int]], epochs: int, seed: int) -> str:
    lines = ["| config | work | batch | buckets | tokens/sample at seq_length | expected bucketed | simulated | "
             "saving | batches per bucket |", "|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        sets = ([tuple(m.config_buckets)] if m.config_buckets else []) + [tuple(s) for s in bucket_sets]
        keyword = [x + m.max_new_tokens for x in m.preference + m.target]
        work = (("training (history)", m.history, m.train_batch), ("generation soft pass (history)", m.history, 1),
                (f"keywords (prompt + {m.max_new_tokens} new)", keyword, m.keyword_batch))
        for buckets in dict.fromkeys(sets):
            ladder = bucket_ladder(buckets, m.seq_length)
            for name, lengths, batch in work:
                exact = expected_tokens(lengths, batch, ladder)
                sim = simulated_tokens(lengths, batch, ladder, epochs, seed)
                shares = ", ".join(f"{b}: {share:.2%}" for b, share in bucket_shares(lengths, batch, ladder).items()
                                   if share > 0)
                lines.append(f"| {Path(m.config).name} | {name} | {batch} | {', '.join(map(str, ladder))} | "
                             f"{m.seq_length} | {exact:.1f} | {sim:.1f} | {1 - exact / m.seq_length:.1%} | {shares} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="the Llama 2 tokenizer.model (or a folder holding it)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configs, one row group each")
    p.add_argument("--data", action="append", default=[], metavar="SCENARIO=PATH",
                   help="a prepared dataset or raw files for a scenario (default: its bundled sample)")
    p.add_argument("--ml100k", metavar="DIR|synthetic", help="MovieLens from ml-100k files, or synthesised")
    p.add_argument("--buckets", action="append", default=[], metavar="B1,B2,...",
                   help="a bucket set to evaluate (repeatable); seq_length is always the last bucket")
    p.add_argument("--max-keyword-samples", type=int, default=2000,
                   help="measure keyword prompts on this many random samples (0: all)")
    p.add_argument("--epochs", type=int, default=200, help="shuffled epochs of the batch simulation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from research.pmg.models.tokenizers import load_llama_tokenizer

    specs = {}
    for item in args.data:
        scenario, sep, path = item.partition("=")
        if not sep or not path:
            p.error(f"--data {item!r}: expected SCENARIO=PATH")
        specs[scenario] = path
    bucket_sets = [[int(b) for b in s.split(",") if b.strip()] for s in args.buckets]
    tokenizer = load_llama_tokenizer(args.tokenizer)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prompt_lengths_") as tmp:
        cache: dict = {}
        for config in args.configs.split(","):
            cfg_path = str(ROOT / config) if not Path(config).is_absolute() else config
            rows.append(measure(cfg_path, tokenizer, specs.get(_scenario_of(cfg_path)), args.ml100k, Path(tmp),
                                cache, args.max_keyword_samples, args.seed))
    print(f"Tokenizer: {args.tokenizer} ({len(tokenizer)} pieces). Lengths in tokens, BOS "
          "included; rows on a bundled sample describe a few dozen synthetic samples, not the full data.\n")
    print(distribution_table(rows))
    print()
    print(savings_table(rows, bucket_sets, args.epochs, args.seed))
    return 0


def _scenario_of(config_path: str) -> str:
    from research.pmg.config import load_config

    return load_config(config_path).scenario


if __name__ == "__main__":
    sys.exit(main())
