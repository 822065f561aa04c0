"""Every benchmark in one run: a table of ratios and peak memory, written to ``benchmarks/results.md``.

    python benchmarks/run.py                    # quick settings: 3 rounds each; an hour or so on 2 cores
    python benchmarks/run.py --full             # each script's own defaults (longer)
    python benchmarks/run.py --only keywords,generate --out /tmp/results.md

Runs ``bench_data.py``, ``bench_keywords.py``, ``bench_generate.py``, ``bench_generate_diffusers.py``,
``bench_train_step.py``, ``bench_personalize.py`` (each documented in benchmarks/README.md) and ``flops.py`` as
separate processes, one after the other, and reads the ratios each prints: graph vs PyNative and MindSpore vs the
PyTorch reference (training step, the sampling loop against diffusers), batched vs sequential
(generation, keyword extraction), cached vs uncached (keyword answer cache), the prepare stage against its
budget. Peak memory is each process's maximum resident set (its child processes included), from ``wait4``.
With the quick settings every timed comparison is the median of 3 rounds that alternate the order of what they
compare (only PyNative, 10-30x slower, runs in one round); the table gives, for each ratio, how many rounds it
is the median of and the range of the same ratio within each round. ``results.md`` also records the machine,
the load average before and after the whole run and each benchmark, each script's command and output, and the
Ascend 910B estimate of ``flops.py`` (an estimate from counted FLOPs, with its assumptions stated). Rewriting
the file keeps two hand-written parts of the old one: the PMG-mini section between the markers of
``benchmarks/mini_pmg.py``, and any notes between the Ascend section's heading and ``flops.py``'s output.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Bench:
    name: str
    script: str
    quick: list[str]
    full: list[str] = field(default_factory=list)


BENCHES = (
    Bench("data", "bench_data.py", ["--repeat", "3"]),
    Bench("keywords", "bench_keywords.py", ["--samples", "8", "--max-new-tokens", "16", "--repeats", "3"]),
    Bench("generate", "bench_generate.py", ["--samples", "2", "--steps", "10", "--repeats", "3"]),
    Bench("generate_diffusers", "bench_generate_diffusers.py", []),  # its default: 3 rounds
    # PyNative stays in the first round only (the script's --pynative-rounds 1): 10-30x slower, no compile
    Bench("train_step", "bench_train_step.py", ["--sizes", "tiny,small,medium", "--steps", "10", "--repeats", "3",
                                                "--pynative-steps", "2"]),
    Bench("personalize", "bench_personalize.py", ["--requests", "3"]),
    Bench("flops", "flops.py", []),
)


@dataclass
class Outcome:
    bench: Bench
    command: list[str]
    code: int
    seconds: float
    peak_mb: float
    output: str
    load_before: float = 0.0  # 1-minute load average when the benchmark started, and when it ended
    load_after: float = 0.0


def run_bench(bench: Bench, full: bool, log_dir: Path) -> Outcome:
    command = [sys.executable, str(HERE / bench.script), *(bench.full if full else bench.quick)]
    log = log_dir / f"{bench.name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    load_before = os.getloadavg()[0]
    start = time.time()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, cwd=log_dir, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss covers the process and the children it waited for
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Outcome(bench, command, proc.returncode, time.time() - start, usage.ru_maxrss / 1024,
                   log.read_text(errors="replace"), load_before, os.getloadavg()[0])


def _f(pattern: str, text: str, group: int = 1) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(group)) if match else None


def _rounds(count: int | None, bracket: str | None = None) -> str:
    """The rounds column: how many rounds a ratio is the median of, and the same ratio's range within each round.

    ``bracket`` is what the scripts print after a ratio: ``rounds: lo-hi``, or ``round 1: x`` for one round.
    """
    if count == 1 or (bracket or "").startswith("round 1:"):
        return "1 round"
    text = f"median of {count or '?'} rounds"
    return text + (f"; per round {bracket.split(': ', 1)[-1]}" if bracket else "")


def _largest(count: int | None, each: str = "") -> str:
    """The rounds column of a peak memory row: the largest over how many runs."""
    return "1 run" if count == 1 else f"largest of {count or '?'} runs{each}"


def _per_round(cell: str) -> int | None:
    """How many per-round values a table cell like ``0.7784 (0.7784, 0.7790, 0.7801)`` lists."""
    m = re.search(r"\(([^)]*)\)", cell)
    return len(m.group(1).split(",")) if m else None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def ratios(outcome: Outcome) -> list[tuple[str, str, str, str]]:
    """(comparison, ratio, rounds behind it, what it means) rows read from one benchmark's output."""
    text, name, rows = outcome.output, outcome.bench.name, []
    if name == "data":
        r = _f(r"ratio to the \d+ s budget: ([\d.]+)", text)
        m = re.search(r"median ([\d.]+) s over (\d+) runs \(([^)]*)\)", text)
        if r is not None and m:
            runs = [float(t) for t in m.group(3).split(",")]
            rounds = "1 run" if len(runs) == 1 else \
                f"median of {len(runs)} runs; per run {min(runs):.2f}-{max(runs):.2f} s"
            rows.append(("prepare ml-100k size / 60 s budget", f"{r:.3f}", rounds,
                         f"median {float(m.group(1)):.2f} s (lower is better)"))
    elif name == "keywords":
        count = _f(r"medians over (\d+) round", text)
        for key, label, digits in (("batched / naive", "keywords: batched / sequential (no KV cache)", 1),
                                   ("batched+kv / naive", "keywords: batched + KV cache / sequential", 1),
                                   ("stage / naive", "keywords: whole stage / sequential", 1),
                                   ("re-run / stage", "keywords: cached re-run / uncached run", 0)):
            m = re.search(rf"^\s*{re.escape(key)} = ([\d.]+)x \[([^\]]+)\]", text, re.MULTILINE)
            if m:
                rows.append((label, f"{float(m.group(1)):.{digits}f}x", _rounds(count and int(count), m.group(2)),
                             "prompts/s"))
    elif name == "generate":
        m = re.search(r"ratio batched / sequential: ([\d.]+)x overall \[([^\]]+)\], ([\d.]+)x generation alone "
                      r"\[([^\]]+)\]; medians of (\d+) round", text)
        if m:
            same = re.search(r"same images and choices: (\w+)", text)
            count = int(m.group(5))
            rows += [("generate: batched / sequential (official loop)", f"{float(m.group(1)):.1f}x",
                      _rounds(count, m.group(2)), "candidates/s, CLIP included; same images and choices: "
                      + (same.group(1) if same else "?")),
                     ("generate: batched / sequential, UNet only", f"{float(m.group(3)):.1f}x",
                      _rounds(count, m.group(4)), "candidates/s")]
    elif name == "generate_diffusers":
        counts, memory = {}, []
        for line in text.splitlines():
            cells = _cells(line)
            if len(cells) == 9 and cells[0] in ("ms-graph", "pt-eager"):
                counts[tuple(cells[:3])] = _per_round(cells[5])
                if cells[7].isdigit():
                    memory.append((f"generate vs diffusers peak RSS, {cells[0]} ({cells[1]}, {cells[2]})",
                                   f"{cells[7]} MB", _largest(counts[tuple(cells[:3])]),
                                   "per process"))
        for m in re.finditer(r"^\s*(\S+) (\S+): ms-graph / pt-eager = ([\d.]+) \[([^\]]+)\]; "
                             r"first call \(compile\) ([\d.]+) s vs ([\d.]+) s", text, re.MULTILINE):
            size, scheduler = m.group(1), m.group(2)
            parity = re.search(rf"^\s*{size} {scheduler}: passed; max \|diff\| ([\d.e+-]+)", text, re.MULTILINE)
            threads = re.search(r"; threads (\d+)", text)
            sides = [counts.get((side, size, scheduler)) for side in ("ms-graph", "pt-eager")]
            rows.append((f"generate: MindSpore graph / diffusers eager ({size}, {scheduler})",
                         f"{float(m.group(3)):.2f}", _rounds(min(sides) if all(sides) else None, m.group(4)),
                         f"candidates/s of the same loop (images within {parity.group(1) if parity else '?'} of "
                         f"diffusers'), {threads.group(1) if threads else '?'} thread(s) each; first call "
                         f"{m.group(5)} s vs {m.group(6)} s"))
        rows += memory
    elif name == "personalize":
        for method in ("pmg", "no_personalization"):
            first = _f(rf"request 1 \(\S+\) {method}: ([\d.]+) s", text)
            m = re.search(rf"^{method}: later calls median ([\d.]+) s, graphs compiled (\d+) in (\d+) calls", text,
                          re.MULTILINE)
            if first and m:
                rows.append((f"personalize ({method}): later call / first call", f"{float(m.group(1)) / first:.2f}",
                             f"1 run: first call once, later calls median of {m.group(3)}",
                             f"seconds; graphs compiled after the first call: {m.group(2)} in {m.group(3)} calls"))
    elif name == "train_step":
        modes = ("ms-graph", "ms-pynative", "pt-eager")
        counts, memory = {}, []
        for line in text.splitlines():  # the table: | mode | size | first step | median (per round) | ... |
            cells = _cells(line)
            mode = cells[0].rstrip("*").strip()
            if len(cells) >= 6 and mode in modes:
                counts[(cells[1], mode)] = _per_round(cells[3])
                if cells[5].isdigit():
                    memory.append((f"train step peak RSS, {cells[0]} ({cells[1]})", f"{cells[5]} MB",
                                   _largest(counts[(cells[1], mode)]), "per process"))
        labels = {("ms-graph", "pt-eager"): "MindSpore graph / PyTorch eager",
                  ("ms-pynative", "pt-eager"): "MindSpore PyNative / PyTorch eager",
                  ("ms-graph", "ms-pynative"): "graph / PyNative"}
        block = text.split("ratios of steps/s", 1)[1] if "ratios of steps/s" in text else ""
        for line in block.splitlines():  # "  tiny: ms-graph / pt-eager = 0.71 [rounds: 0.69-0.74];  ..."
            head = re.match(r"^\s+(\S+): ", line)
            for m in re.finditer(r"(\S+) / (\S+) = ([\d.]+) \[([^\]]+)\]", line) if head else ():
                size, pair = head.group(1), (m.group(1), m.group(2))
                if pair in labels:
                    sides = [counts.get((size, mode)) for mode in pair]
                    rows.append((f"train step: {labels[pair]} ({size})", f"{float(m.group(3)):.2f}",
                                 _rounds(min(sides) if all(sides) else None, m.group(4)), f"steps/s, {size} config"))
        m = re.search(r"^peak RSS above the post-import RSS, ms-graph / pt-eager \(largest over rounds\): (.*)$", text,
                      re.MULTILINE)
        for size, r in re.findall(r"(\S+) ([\d.]+)", m.group(1)) if m else ():
            sides = [counts.get((size, mode)) for mode in ("ms-graph", "pt-eager")]
            rows.append((f"train step: peak RSS above the post-import RSS, MindSpore graph / PyTorch eager ({size})",
                         r, _largest(min(sides) if all(sides) else None, " each"),
                         "MB the step itself adds (below 1: MindSpore adds less)"))
        rows += memory
    return rows


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        kb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    versions = []
    for module in ("mindspore", "mindformers", "mindone", "torch", "numpy"):
        try:
            from importlib.metadata import version

            versions.append(f"{module} {version(module)}")
        except Exception:  # noqa: BLE001 - not installed
            pass
    return [f"- {platform.machine()}, {cpu}, {os.cpu_count()} cores{mem}; {platform.platform()}",
            f"- Python {platform.python_version()}; " + ", ".join(versions), "- CPU only (no accelerator)"]


ASCEND = "## Ascend 910B throughput at real sizes (Llama-2-7B + SD 1.5): an estimate"
FLOPS_START = "Estimate, not a measurement."  # the first words of flops.py's output


def ascend_notes(old: str) -> str:
    """Notes written by hand between the Ascend heading and flops.py's output in an earlier results.md."""
    if ASCEND not in old:
        return ""
    section = old.split(ASCEND, 1)[1].split("\n## ", 1)[0]
    return section.split(FLOPS_START, 1)[0].strip() if FLOPS_START in section else ""


def render(outcomes: list[Outcome], load_start, load_end, full: bool, notes: str = "") -> str:
    lines = ["# Benchmark results", "",
             f"Written by `python benchmarks/run.py{' --full' if full else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Ratios are measured in one run on one machine; "
             "compare them, not the absolute times, across machines.", "", "## Machine", "", *machine(),
             f"- load average {load_start[0]:.2f} before, {load_end[0]:.2f} after (above ~1.5 on 2 cores the "
             "machine was shared: ratios hold better than absolute times)", "",
             "## Ratios", "",
             "Each ratio is the ratio of the medians over the rounds in the rounds column; a round times every "
             "path of the comparison once, and the order of the paths alternates between rounds, so a slow drift "
             "of the load hits them alike. The range is the same ratio within each round. PyNative runs in one "
             "round only (10-30x slower, no compile: `bench_train_step.py --pynative-rounds 1`).", "",
             "| benchmark | comparison | ratio | rounds | note |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        rows = ratios(outcome)
        if outcome.code != 0:
            rows = [("failed", f"exit {outcome.code}", "", "see its output below")]
        for comparison, ratio, rounds, note in rows:
            lines.append(f"| {outcome.bench.name} | {comparison} | {ratio} | {rounds} | {note} |")
    lines += ["", "## Peak memory, wall time and load per benchmark process", "",
              "| benchmark | peak RSS MB | wall s | load average before -> after | exit |", "|---|---|---|---|---|"]
    for outcome in outcomes:
        lines.append(f"| {outcome.bench.name} | {outcome.peak_mb:.0f} | {outcome.seconds:.0f} | "
                     f"{outcome.load_before:.2f} -> {outcome.load_after:.2f} | {outcome.code} |")
    flops = next((o for o in outcomes if o.bench.name == "flops" and o.code == 0), None)
    if flops is not None:
        lines += ["", ASCEND, "", *([notes, ""] if notes else []), flops.output.strip()]
    lines += ["", "## Outputs", ""]
    for outcome in outcomes:
        shown = " ".join(Path(c).name if i < 2 else c for i, c in enumerate(outcome.command))
        lines += [f"### {outcome.bench.name}", "", f"`{shown}`",
                  "", "```", _clean(outcome.output), "```", ""]
    return "\n".join(lines)


def _clean(text: str, limit: int = 100) -> str:
    """The benchmark's own lines (library warnings dropped), the last ``limit`` of them."""
    keep = [line for line in text.splitlines() if line.strip() and not re.match(
        r"^\s*(\[WARNING\]|\[INFO\]|\d{4}-\d\d-\d\d .* - (INFO|WARNING)|warnings\.warn|.*Warning:|🚨)", line)]
    return "\n".join(keep[-limit:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="each benchmark's own default settings")
    p.add_argument("--only", help="comma-separated subset of " + ",".join(b.name for b in BENCHES))
    p.add_argument("--out", default=str(HERE / "results.md"))
    args = p.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    load_start = os.getloadavg()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="pmg-bench-") as work:
        for bench in chosen:
            print(f"running {bench.name} ...", flush=True)
            outcome = run_bench(bench, args.full, Path(work))
            outcomes.append(outcome)
            print(f"  exit {outcome.code}, {outcome.seconds:.0f} s, peak RSS {outcome.peak_mb:.0f} MB, load average "
                  f"{outcome.load_before:.2f} -> {outcome.load_after:.2f}", flush=True)
            for comparison, ratio, rounds, note in ratios(outcome):
                print(f"  {comparison}: {ratio} ({rounds}; {note})", flush=True)
    out = Path(args.out)
    old = out.read_text(encoding="utf-8") if out.is_file() else ""
    text = render(outcomes, load_start, os.getloadavg(), args.full, ascend_notes(old))
    if old:  # keep the PMG-mini quality section that benchmarks/mini_pmg.py writes
        from mini_pmg import replace_section, START, END

        if START in old and END in old:
            text = replace_section(text, START + old.split(START, 1)[1].split(END, 1)[0] + END)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"written {args.out}")
    return 0 if all(o.code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
