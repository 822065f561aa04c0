"""``python -m research.pmg.pipeline``: every stage in order, each skipped when its outputs are complete and current.

    python -m research.pmg.pipeline                                   # configs/mini/pmg.yaml: PMG-mini, CPU, minutes
    python -m research.pmg.pipeline --config configs/pog.yaml --nproc 8
    python -m research.pmg.pipeline --config C --stages prepare,keywords   # only these (earlier ones must be done)
    python -m research.pmg.pipeline --config C --force generate             # re-run generate (and what follows)

A re-run after a crash or a kill continues where the last one stopped. Stage logs: ``<log_dir>/pipeline/``;
state: ``<output_dir>/pipeline/``; the report: ``<output_dir>/report.md``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run
from research.pmg.errors import error_line
from research.pmg.errors import PMGError
from research.pmg.pipeline.stages import STAGE_NAMES

# PMG-mini: small trained models on the bundled sticker world (its paths are relative to the repository root).
DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "mini" / "pmg.yaml")


def _stage_list(text: str | None, flag: str) -> list[str]:
    if text is None:
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGE_NAMES]
    if unknown or not names:
        raise PMGError(f"{flag} {text!r}: stages are {', '.join(STAGE_NAMES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m research.pmg.pipeline",
                            description="Every PMG stage in order (prepare, keywords, train, generate, evaluate, "
                                        "report), each skipped when its outputs are complete and current; a re-run "
                                        "continues where the last one stopped.")
    add_config_args(parser, default_config=DEFAULT_CONFIG)
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel workers for keywords and train (msrun on this node; default 1)")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGE_NAMES)} (default all)")
    parser.add_argument("--force", help="comma-separated stages to run again even when up to date")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        raise PMGError(f"--nproc {args.nproc}: must be >= 1")
    only, force = _stage_list(args.stages, "--stages"), _stage_list(args.force, "--force")
    cfg = config_from_args(args)

    from research.pmg.pipeline.runner import Pipeline, StageFailed

    pipeline = Pipeline(cfg, args.config, args.overrides, nproc=args.nproc, echo=lambda s: print(s, flush=True))
    try:
        pipeline.run(only=only or None, force=force)
    except StageFailed as exc:
        print(error_line(exc), file=sys.stderr)
        return exc.code
    if pipeline.paths.report.is_file() and (not only or "report" in only):
        print(f"pipeline complete: {pipeline.paths.report}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
