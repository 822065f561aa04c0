"""The single-user command: one history in, the keywords printed and the images written.

    python -m research.pmg.api --user 17                                   # PMG-mini (the default config)
    python -m research.pmg.api --history s-cats-012,s-cats-007 --target s-food-003 --n 2
    python -m research.pmg.api --request request.json --config configs/movielens.yaml
    bash scripts/run_infer.sh --user 17                                    # the same, with the environment set up

``--user`` takes the user's sample that split-wide generation makes (their last in ``generate.splits``), so its
images are that run's; ``--request`` reads a JSON request with free items (research/pmg/api/request.py). The
folder ``--out`` (default ``<runtime.output_dir>/infer/<name>``) gets ``chosen.png``, ``sheet.png`` (history |
target | candidates | chosen), every candidate and ``result.json``; it is written whole or not at all, and only a
folder this command wrote is replaced. ``--method both`` also writes the non-personalized comparison into
``<out>/no_personalization``. Bad ids or JSON end with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from research.pmg.cli import ArgumentParser, add_config_args, field_overrides, run  # noqa: E402

DEFAULT_CONFIG = str(Path(__file__).resolve().parents[3] / "configs" / "mini" / "pmg.yaml")
OUT_STAGE = "infer"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.api",
                       description="Personalized images for one user: give a prepared user, a history of item ids and "
                                   "a target, or a JSON request with free items.")
    add_config_args(p, default_config=DEFAULT_CONFIG)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--user", metavar="USER_ID", help="a user of the prepared dataset (their sample in "
                                                       "generate.splits)")
    what.add_argument("--history", metavar="ID,ID,...", help="item ids of the history, oldest first (needs --target)")
    what.add_argument("--request", metavar="FILE", help="a JSON request: history, target, conversation, n "
                                                       "(research/pmg/api/request.py)")
    p.add_argument("--target", metavar="ID", help="the target item's id (with --history)")
    p.add_argument("--conversation", action="append", default=None, metavar="TEXT",
                   help="a chat turn before the sticker is sent, oldest first (repeatable; with --history)")
    p.add_argument("--n", type=int, metavar="N", help="images per weight set (default generate.images_per_set)")
    p.add_argument("--method", choices=("pmg", "no_personalization", "both"), default="pmg",
                   help="pmg (default), the non-personalized comparison, or both")
    p.add_argument("--soft-checkpoint", metavar="PATH",
                   help="trained soft preference (default: generate.soft_checkpoint, else the newest checkpoint of "
                        "the config's training folder, else none); '' for none")
    p.add_argument("--out", metavar="DIR", help="output folder (default <runtime.output_dir>/infer/<name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.history is not None and not args.target:
        parser.error("--history needs --target")
    if args.history is None and (args.target or args.conversation):
        parser.error("--target and --conversation go with --history")

    from research.pmg.api import PMG, RequestError, load_request

    if args.request:  # read before any model loads: a bad file costs nothing
        request, base = load_request(args.request)
    else:
        request, base = None, None
    if args.history is not None:
        ids = [piece.strip() for piece in args.history.split(",")]
        if not all(ids):
            raise RequestError(f"--history {args.history!r}: an empty id (ids are comma-separated, no spaces needed)")
    pmg = PMG.from_config(args.config, field_overrides(args), soft_checkpoint=args.soft_checkpoint)
    if args.user is not None:
        sample = pmg.user_sample(args.user)
        history, target, conversation, n, name = (list(sample.history), sample.target, sample.conversation,
                                                  args.n, f"user-{args.user}")
    elif request is not None:
        history, target, conversation = request.history, request.target, request.conversation
        n, name = args.n or request.n, Path(args.request).stem
    else:
        history, target, conversation, n = ids, args.target, tuple(args.conversation or ()), args.n
        name = None
    methods = ("pmg", "no_personalization") if args.method == "both" else (args.method,)
    results = [pmg.personalize(history, target, conversation, n, method=method, base=base) for method in methods]
    name = name or results[0].sample
    out = Path(args.out) if args.out else pmg.layout.root / "infer" / _safe(name)
    _write(out, results)
    for result in results:
        _print(result, out if result is results[0] else out / result.method)
    return 0


def _write(out: Path, results) -> None:
    from research.pmg import ownership

    with ownership.staged(out, OUT_STAGE) as staging:
        results[0].save(staging)
        for result in results[1:]:
            result.save(staging / result.method)


def _print(result, folder: Path) -> None:
    chosen = result.candidates[result.chosen]
    source = f"sample {result.sample}" if result.prepared else f"new request {result.sample}"
    print(f"{result.method}: {source}, {len(result.candidates)} candidates, soft preference "
          f"{'on' if result.soft else 'off (keywords only)'}")
    unused = " (not used by this method)" if result.method == "no_personalization" else ""
    print(f"  preference keywords{unused}: {', '.join(result.preference_keywords) or '(none)'}")
    print(f"  target keywords: {', '.join(result.target_keywords) or '(none)'}")
    for c in result.candidates:
        mark = "  <- chosen" if c.chosen else ""
        print(f"  w_p={c.weights[0]:g} w_t={c.weights[1]:g} image {c.m}: d_p {c.d_p:.4f} d_t {c.d_t:.4f} "
              f"z {c.z:.4f}{mark}")
    print(f"  -> {folder / 'chosen.png'} (weights {chosen.weights[0]:g},{chosen.weights[1]:g}); "
          f"sheet {folder / 'sheet.png'}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "request"


if __name__ == "__main__":
    sys.exit(run(main))
