"""``python -m research.pmg.train --config CONFIG [--set k=v] [--resume]``: train the soft preference.

Reads the prepared dataset and the keywords file (``train.keywords``, else the keyword stage's output); writes
``<output_dir>/train/`` (config.yaml, train_log.jsonl, checkpoints/step-*/ with soft_preference.ckpt for
generation), a folder it made itself or an empty one (research/pmg/ownership.py); paths from
research/pmg/layout.py. Under ``msrun`` each worker trains on its slice of every global batch and gradients
are averaged (data parallel).
"""
from __future__ import annotations

import sys

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run
from research.pmg.errors import error_line
from research.pmg.layout import Layout


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m research.pmg.train", description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    layout = Layout.of(cfg)

    from research.pmg import ownership
    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    out = layout.train
    if not args.resume:  # fail fast; with --resume the newest checkpoint there is read first (Trainer.run claims)
        ownership.check(out, "train")
    from research.pmg.records.samples import load_prepared
    from research.pmg.records.keywords import load_keywords
    from research.pmg.train.build import build_trainer
    from research.pmg.errors import NonFiniteLoss

    prepared = load_prepared(layout.data)
    keywords = load_keywords(layout.train_keywords)
    trainer = build_trainer(cfg, runtime, prepared, keywords, rank=runtime.rank, world=runtime.world_size)
    try:
        result = trainer.run(out, resume=args.resume, progress=not args.no_progress)
    except NonFiniteLoss as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    if runtime.rank == 0:
        last = result.eval_losses.get(result.steps_done)
        print(f"trained {result.steps_done} steps; last loss {result.losses[-1] if result.losses else float('nan'):.4f}"
              + (f", held-out loss {last:.4f}" if last is not None else "")
              + f"\ncheckpoint: {result.last_checkpoint}\nlog: {out / 'train_log.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
