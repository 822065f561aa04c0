"""Command line of the generation stage.

    python -m research.pmg.generate --config configs/tiny.yaml
    python -m research.pmg.generate --config configs/pog.yaml --soft-checkpoint output/pog/train --weighting repetition

Reads the prepared samples (``--data``, default ``data.out`` or ``<output_dir>/data``), their keywords
(``--keywords``, default ``<output_dir>/keywords/keywords.jsonl``) and optionally a trained soft preference;
writes ``<output_dir>/generate/`` (``--out``). Settings: defaults, then the config's ``generate:`` section (once
PMGConfig has one) and ``--set``, then flags. Samples already in the manifest are skipped, so an interrupted
run continues where it stopped. Bad input ends with one line ``error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # started as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run  # noqa: E402
from research.pmg.config.generate import SPLITS, GenerateConfig  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.generate",
                description="Generate personalized images: K weight sets x M images per sample, the best picked "
                            "by CLIP (research/pmg/generate/README.md).")
    add_config_args(p)
    p.add_argument("--data", help="prepared dataset folder (default: data.out or <runtime.output_dir>/data)")
    p.add_argument("--keywords", help="keywords file (default: <runtime.output_dir>/keywords/keywords.jsonl)")
    p.add_argument("--out", help="output folder (default: <runtime.output_dir>/generate)")
    p.add_argument("--soft-checkpoint", dest="soft_checkpoint",
                   help="soft_preference.ckpt, a step-* folder or a training output folder (default: keywords only)")
    p.add_argument("--weight-sets", dest="weight_sets", metavar="P,T;P,T",
                   help='(w_p, w_t) pairs, e.g. "1,1;1,2;2,1" (the default)')
    p.add_argument("--images-per-set", dest="images_per_set", type=int, help="M images per weight set (default 1)")
    p.add_argument("--weighting", choices=("scaling", "repetition"), help="how weights act (default scaling)")
    p.add_argument("--preference-keywords", dest="preference_keywords", action=argparse.BooleanOptionalAction,
                   default=None, help="condition on the preference keywords (default on; off: target (+ soft) only)")
    p.add_argument("--soft-weight", dest="soft_weight", type=float, help="w_s on the soft embedding (default 1)")
    p.add_argument("--scheduler", choices=("ddim", "dpm_solver"), help="sampler (default dpm_solver)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the model's)")
    p.add_argument("--negative-prompt", dest="negative_prompt",
                   help="(default: the scenario's, from the official demo)")
    p.add_argument("--a", type=float, help="balance a in z = a log d_p + (1 - a) log d_t (default 0.5)")
    p.add_argument("--score-form", dest="score_form", choices=("log", "linear"), help="(default log)")
    p.add_argument("--micro-batch", dest="micro_batch", type=int, help="candidates per UNet call (default 8)")
    p.add_argument("--splits", help=f"comma-separated subset of {','.join(SPLITS)} (default test)")
    p.add_argument("--max-samples", dest="max_samples", type=int, help="first N selected samples (default 0 = all)")
    p.add_argument("--contact-sheets", dest="contact_sheets", action=argparse.BooleanOptionalAction, default=None,
                   help="write a contact sheet per sample (default on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


_FLAG_FIELDS = ("data", "keywords", "out", "soft_checkpoint", "images_per_set", "weighting", "preference_keywords",
                "soft_weight", "scheduler", "steps", "guidance", "size", "negative_prompt", "a", "score_form",
                "micro_batch", "max_samples", "contact_sheets")


def generate_config(cfg, args: argparse.Namespace) -> GenerateConfig:
    """Defaults < the config's ``generate:`` section < flags; validated once."""
    from research.pmg.config import ConfigError

    base = cfg.generate
    changes = {name: getattr(args, name) for name in _FLAG_FIELDS if getattr(args, name) is not None}
    if args.splits is not None:
        changes["splits"] = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.weight_sets is not None:
        try:
            changes["weight_sets"] = [[float(w) for w in pair.split(",")] for pair in args.weight_sets.split(";")
                                      if pair.strip()]
        except ValueError:
            raise ConfigError(f"--weight-sets {args.weight_sets!r}: expected pairs like \"1,1;1,2\"") from None
    gcfg = dataclasses.replace(base, **changes)
    gcfg.validate("generate.")
    return gcfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    gcfg = generate_config(cfg, args)

    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    from research.pmg.generate.run import generate

    output_dir = runtime.output_dir
    out = Path(gcfg.out or output_dir / "generate")
    result = generate(cfg, gcfg, runtime, data_dir=Path(gcfg.data or cfg.data.out or output_dir / "data"),
                      keywords_path=Path(gcfg.keywords or output_dir / "keywords" / "keywords.jsonl"), out_dir=out,
                      progress=not args.no_progress)
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
