"""PMG-mini's quality table: no personalization vs keywords only vs soft only vs full PMG, into results.md.

    python benchmarks/mini_pmg.py                          # runs configs/mini/results.yaml, then writes the table
    python benchmarks/mini_pmg.py --no-run --output output/mini_results   # only re-read a finished run

If the larger held-out run of ``configs/mini/held_out_400.yaml`` has been made (its header says how; default
folder ``output/mini_400``), its PMG vs no personalization comparison and verdicts are added to the section.

Runs the whole pipeline (``python -m research.pmg.pipeline``: finished stages are skipped) on the PMG-mini world,
reads its evaluation (``evaluate/summary.json``: every metric's mean with a bootstrap interval, and each method's
paired difference to no personalization) and replaces the section between the PMG-mini markers of
``benchmarks/results.md`` (``benchmarks/run.py`` keeps that section when it rewrites the file). The acceptance
rule is :mod:`research.pmg.mini.acceptance`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from research.pmg.files import write_atomic  # noqa: E402
from research.pmg.mini.acceptance import verdicts  # noqa: E402

START, END = "<!-- pmg-mini:start -->", "<!-- pmg-mini:end -->"
CONFIG = REPO / "configs" / "mini" / "results.yaml"


def table(summary: dict) -> list[str]:
    metrics = [m for m in next(iter(summary["results"].values()))]
    stats = summary["statistics"]
    lines = [f"Mean over {summary['samples']} held-out samples (split `{summary['split']}`) with "
             f"{stats['confidence']:.0%} percentile-bootstrap intervals ({stats['bootstrap_samples']} resamples); "
             f"LPIPS lower is closer, SSIM and CLIP higher.", "",
             "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for method, results in summary["results"].items():
        cells = [f"{r['mean']:.4f} [{r['low']:.4f}, {r['high']:.4f}]" if r["mean"] is not None else "n/a"
                 for r in results.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    baseline = summary["baseline"]
    lines += ["", f"Paired differences to `{baseline}` (per-sample difference, its bootstrap interval, two-sided "
              "sign-flip p):", "", "| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for method, comparison in summary["comparisons"].items():
        cells = [f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] p {c['p_value']:.2g}"
                 if c["diff"] is not None else "n/a" for c in comparison.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def verdict_line(v) -> str:
    return f"{'PASS' if v.passed else 'FAIL'} {v.what}: {v.detail}"


def section(summary: dict, output: Path, seconds: float | None, held_out: tuple[dict, Path] | None) -> str:
    lines = [START, "## PMG-mini: does it personalize?", "",
             f"Written by `python benchmarks/mini_pmg.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
             f"from `{output}` (config `configs/mini/results.yaml`: the default PMG-mini run with all four "
             "methods; models in research/pmg/assets/mini, world research/pmg/assets/mini/world)."
             + (f" Pipeline wall time {seconds / 60:.1f} min." if seconds else ""), ""]
    lines += table(summary)
    lines += ["", "Acceptance (research/pmg/mini/acceptance.py; checked by tests/test_mini_pmg.py on the default "
              "run):", ""]
    lines += [f"- {verdict_line(v)}" for v in verdicts(summary)]
    if held_out:
        other, folder = held_out
        lines += ["", f"### On {other['samples']} held-out samples of new users", "",
                  f"From `{folder}` (config `configs/mini/held_out_400.yaml`: the default run on a world of 400 new "
                  "simulated users, seed 3, one test sample per user with enough sticker uses), PMG against no "
                  "personalization; checked by the opt-in test `PMG_SLOW_TESTS=1 python -m pytest tests/test_mini_pmg.py "
                  "-k held_out` (about 30 min on 2 cores, beyond the CI budget):", ""]
        lines += [f"- {verdict_line(v)}" for v in verdicts(other)]
    lines += ["", "The selection settings (a, score form, weight sets, images per set) and w_s were compared on the "
              "valid split, never on these test samples (research/pmg/mini/README.md).", "", END]
    return "\n".join(lines)


def replace_section(text: str, new: str) -> str:
    if START in text and END in text:
        head, rest = text.split(START, 1)
        return head + new + rest.split(END, 1)[1]
    return text.rstrip("\n") + "\n\n" + new + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--output", default="output/mini_results", help="runtime.output_dir of the run")
    p.add_argument("--no-run", action="store_true", help="only read the finished run's evaluation")
    p.add_argument("--results", default=str(HERE / "results.md"))
    p.add_argument("--held-out", default="output/mini_400",
                   help="runtime.output_dir of a finished configs/mini/held_out_400.yaml run (added when present)")
    args = p.parse_args()
    seconds = None
    if not args.no_run:
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "research.pmg.pipeline", "--config", args.config,
                        "--set", f"runtime.output_dir={args.output}"], cwd=REPO, check=True)
        seconds = time.time() - t0
    path = REPO / args.output / "evaluate" / "summary.json"
    if not path.is_file():
        print(f"error: {path}: no evaluation summary (run without --no-run first)", file=sys.stderr)
        return 2
    summary = json.loads(path.read_text(encoding="utf-8"))
    results = Path(args.results)
    old = results.read_text(encoding="utf-8") if results.is_file() else "# Benchmark results\n"
    held_path = REPO / args.held_out / "evaluate" / "summary.json"
    held_out = (json.loads(held_path.read_text(encoding="utf-8")), Path(args.held_out)) if held_path.is_file() else None
    write_atomic(results, replace_section(old, section(summary, Path(args.output), seconds, held_out)))
    for name, found in (("default world", summary), ("held-out users", held_out[0] if held_out else None)):
        for v in verdicts(found) if found else []:
            print(f"{name}: {verdict_line(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
