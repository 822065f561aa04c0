"""``python -m research.pmg.plan --config CONFIG [--nproc N] [--set k=v]``: memory and time per NPU, before a run.

Prints a Markdown report: the memory each job (training with and without recompute, keyword extraction,
generation) needs on one NPU and whether it fits 32 GB / 64 GB cards, the models' sizes, FLOPs per sample and
the hours of the config's training run. ``--json`` prints the same as JSON. Reads only the config and the
model folders' ``config.json`` files; absent folders fall back to the architectures they are expected to hold.
"""
from __future__ import annotations

import json
import sys

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _sizes(text: str) -> tuple[float, ...]:
    sizes = tuple(float(part) for part in text.split(","))
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(text)
    return sizes


_sizes.__name__ = "list of card sizes"


def main(argv: list[str] | None = None) -> int:
    from research.pmg.plan import CHIPS, Assumptions, make_plan, to_json, to_markdown

    parser = ArgumentParser(prog="python -m research.pmg.plan", description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--nproc", type=_positive(int), default=1, help="NPUs, data parallel (default 1)")
    parser.add_argument("--chip", choices=sorted(CHIPS), default="910B",
                        help="910B (bf16, 313 TFLOPS, 32/64 GB, flash attention) or 910A (fp16, 256 TFLOPS, 32 GB)")
    parser.add_argument("--mfu", type=_positive(float), default=0.30, help="model FLOPs utilisation (default 0.30)")
    parser.add_argument("--peak-tflops", type=_positive(float), default=0.0,
                        help="dense 16-bit peak (default: the chip's)")
    parser.add_argument("--memory-gb", type=_sizes, default=(),
                        help="card sizes to judge, e.g. 32,64 (default: the chip's)")
    parser.add_argument("--reserve-gb", type=float, default=2.0,
                        help="memory held by the runtime, HCCL and workspace (default 2)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1:
        parser.error(f"argument --mfu: must be in (0, 1], got {args.mfu:g}")
    if args.reserve_gb < 0:
        parser.error(f"argument --reserve-gb: must be >= 0, got {args.reserve_gb:g}")
    cfg = config_from_args(args)
    plan = make_plan(cfg, Assumptions(CHIPS[args.chip], nproc=args.nproc, mfu=args.mfu, reserve_gb=args.reserve_gb,
                                      peak_tflops=args.peak_tflops, memory_gb=args.memory_gb))
    sys.stdout.write(json.dumps(to_json(plan), indent=2) + "\n" if args.json else to_markdown(plan))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
