"""Command line of the generation stage.

    python -m research.pmg.generate --config configs/tiny.yaml
    python -m research.pmg.generate --config configs/pog.yaml --soft-checkpoint output/pog/train \
        --set generate.weighting=repetition

Reads the prepared samples (``--data``), their keywords (``--keywords``) and, with ``--soft-checkpoint``, a
trained soft preference (without one: keywords only); writes ``<output_dir>/generate/`` (``--out``). Settings:
the config's ``generate:`` section, changed with ``--set``; paths from research/pmg/layout.py. Samples already in
the manifest are skipped, so an interrupted run continues where it stopped. Bad input ends with one line
``error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from research.pmg.cli import ArgumentParser, add_config_args, add_field_flag, config_from_args, run  # noqa: E402
from research.pmg.layout import Layout  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.generate",
                       description="Generate personalized images: K weight sets x M images per sample, the best "
                                   "picked by CLIP (research/pmg/generate/README.md). Settings: the generate: "
                                   "section of the config, changed with --set generate.<field>=VALUE (see configs/ "
                                   "and research/pmg/config/generate.py).")
    add_config_args(p)
    add_field_flag(p, "--data", "generate.data", "prepared dataset folder", metavar="DIR")
    add_field_flag(p, "--keywords", "generate.keywords", "keywords file", metavar="FILE")
    add_field_flag(p, "--out", "generate.out", "output folder", metavar="DIR")
    add_field_flag(p, "--soft-checkpoint", "generate.soft_checkpoint",
                   "soft_preference.ckpt, a step-* folder or a training output folder", metavar="PATH")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    layout = Layout.of(cfg)

    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    from research.pmg.generate.run import generate

    out = layout.generate
    result = generate(cfg, cfg.generate, runtime, data_dir=layout.generate_data,
                      keywords_path=layout.generate_keywords, out_dir=out, progress=not args.no_progress)
    chosen = result.summary["chosen_mean"]
    print(f"generate: {len(result.generated)} samples generated, {result.skipped} already done"
          + (f", {result.without_keywords} without keywords (skipped)" if result.without_keywords else "")
          + f" -> {out / 'manifest.jsonl'}")
    if result.summary["samples"]:
        print(f"  chosen candidates (all {result.summary['samples']} samples): mean d_p {chosen['d_p']:.4f}, "
              f"d_t {chosen['d_t']:.4f}, z {chosen['z']:.4f}; picks per (w_p,w_t): "
              + ", ".join(f"({k}) {v}" for k, v in result.summary["picks_per_weight_set"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
