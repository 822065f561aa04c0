"""One user's request through the library API: the first call (models load, graphs compile) against the later ones.

    python benchmarks/bench_personalize.py [--output-dir output/mini_pmg] [--requests 4] [--rows 0]

On PMG-mini (configs/mini/pmg.yaml): ``PMG.from_config`` once, then ``personalize`` for the first ``--requests``
test-split users in turn, PMG and then the no-personalization comparison (what the demo asks for each request).
For every call it prints the seconds and the number of graphs MindSpore compiled
(:func:`research.pmg.runtime.counting_compiles`, read from MindSpore's own compile path): the first call of each
method compiles, a later call should compile none. ``--output-dir`` reuses a finished main job (its prepared data,
keywords and trained soft preference); by default a temporary folder, where the API prepares the data, asks the
mini LLM for the keywords and runs keywords only. ``--rows`` sets the UNet call size (0 = generate.micro_batch,
the byte-identical default; e.g. 3 = one request's candidates).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", help="a finished PMG-mini run to reuse (default: a temporary folder)")
    p.add_argument("--requests", type=int, default=4, help="users asked for, each for both methods")
    p.add_argument("--rows", type=int, default=0, help="UNet call size (0 = generate.micro_batch)")
    args = p.parse_args()
    output_dir = Path(args.output_dir).resolve() if args.output_dir else None
    # The mini config's data and model paths are relative to the repository, as for its scripts (configs resolve
    # relative paths against the working directory): run there, wherever this was started from.
    os.chdir(REPO)
    if output_dir:
        run(output_dir, args)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-personalize-") as tmp:
            run(Path(tmp) / "mini_pmg", args)


def run(out: Path, args) -> None:
    from research.pmg.api import PMG
    from research.pmg.runtime import counting_compiles

    start = time.perf_counter()
    pmg = PMG.from_config(REPO / "configs" / "mini" / "pmg.yaml", [f"runtime.output_dir={out}"],
                          rows=args.rows or None)
    users = pmg.users()[:args.requests]
    print(f"PMG.from_config: {time.perf_counter() - start:.2f} s; soft preference: "
          f"{pmg.soft_checkpoint or 'none (keywords only)'}; users: {', '.join(users)}")
    later = {"pmg": [], "no_personalization": []}
    for i, user in enumerate(users):
        sample = pmg.user_sample(user)
        for method in later:
            start = time.perf_counter()
            with counting_compiles() as compiled:
                pmg.personalize(list(sample.history), sample.target, list(sample.conversation), method=method)
            seconds = time.perf_counter() - start
            if i:
                later[method].append((seconds, len(compiled)))
            print(f"request {i + 1} ({sample.id}) {method}: {seconds:.2f} s, {len(compiled)} graphs compiled")
    for method, calls in later.items():
        if calls:
            print(f"{method}: later calls median {statistics.median(s for s, _ in calls):.2f} s, "
                  f"graphs compiled {sum(c for _, c in calls)} in {len(calls)} calls")


if __name__ == "__main__":
    main()
