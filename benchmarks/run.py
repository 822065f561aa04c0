"""Every benchmark in one run: a table of ratios and peak memory, written to ``benchmarks/results.md``.

    python benchmarks/run.py                    # quick settings, ~10-20 min on 2 cores
    python benchmarks/run.py --full             # each script's own defaults (longer)
    python benchmarks/run.py --only keywords,generate --out /tmp/results.md

Runs ``bench_data.py``, ``bench_keywords.py``, ``bench_generate.py``, ``bench_generate_diffusers.py``,
``bench_train_step.py``, ``bench_personalize.py`` (each documented in benchmarks/README.md) and ``flops.py`` as
separate processes, one after the other, and reads the ratios each prints: graph vs PyNative and MindSpore vs the
PyTorch reference (training step, the sampling loop against diffusers), batched vs sequential
(generation, keyword extraction), cached vs uncached (keyword answer cache), the prepare stage against its
budget. Peak memory is each process's maximum resident set (its child processes included), from ``wait4``.
``results.md`` also records the machine, the load before and after, each script's command and output, and the
Ascend 910B estimate of ``flops.py`` (an estimate from counted FLOPs, with its assumptions stated).
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
    Bench("data", "bench_data.py", ["--repeat", "1"]),
    Bench("keywords", "bench_keywords.py", ["--samples", "4", "--max-new-tokens", "16"]),
    Bench("generate", "bench_generate.py", ["--samples", "2", "--steps", "5"]),
    Bench("generate_diffusers", "bench_generate_diffusers.py", []),
    Bench("train_step", "bench_train_step.py", ["--sizes", "tiny", "--steps", "10", "--repeats", "1",
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


def run_bench(bench: Bench, full: bool, log_dir: Path) -> Outcome:
    command = [sys.executable, str(HERE / bench.script), *(bench.full if full else bench.quick)]
    log = log_dir / f"{bench.name}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    start = time.time()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, cwd=log_dir, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss covers the process and the children it waited for
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Outcome(bench, command, proc.returncode, time.time() - start, usage.ru_maxrss / 1024,
                   log.read_text(errors="replace"))


def _f(pattern: str, text: str, group: int = 1) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(group)) if match else None


def ratios(outcome: Outcome) -> list[tuple[str, str, str]]:
    """(comparison, ratio, what it means) rows read from one benchmark's output."""
    text, name, rows = outcome.output, outcome.bench.name, []
    if name == "data":
        r = _f(r"ratio to the \d+ s budget: ([\d.]+)", text)
        med = _f(r"median ([\d.]+) s over", text)
        if r is not None:
            rows.append(("prepare ml-100k size / 60 s budget", f"{r:.3f}", f"median {med:.2f} s (lower is better)"))
    elif name == "keywords":
        m = re.search(r"ratio batched\+cached / naive: ([\d.]+)x \(batching ([\d.]+)x, \+ KV cache ([\d.]+)x\)", text)
        if m:
            rows += [("keywords: batched / sequential (no KV cache)", f"{float(m.group(2)):.1f}x", "prompts/s"),
                     ("keywords: batched + KV cache / sequential", f"{float(m.group(3)):.1f}x", "prompts/s"),
                     ("keywords: whole stage / sequential", f"{float(m.group(1)):.1f}x", "prompts/s")]
        first = _f(r"batched \+ KV cache \+ answer cache\s+[\d.]+ s\s+([\d.]+) prompts/s", text)
        cached = _f(r"re-run, all answers cached\s+[\d.]+ s\s+([\d.]+) prompts/s", text)
        if first and cached:
            rows.append(("keywords: cached re-run / uncached run", f"{cached / first:.0f}x", "prompts/s"))
    elif name == "generate":
        m = re.search(r"ratio batched / sequential: ([\d.]+)x overall, ([\d.]+)x generation alone", text)
        if m:
            rows += [("generate: batched / sequential (official loop)", f"{float(m.group(1)):.1f}x",
                      "candidates/s, CLIP included"),
                     ("generate: batched / sequential, UNet only", f"{float(m.group(2)):.1f}x", "candidates/s")]
    elif name == "generate_diffusers":
        for m in re.finditer(r"^\s*(\S+) (\S+): ms-graph / pt-eager = ([\d.]+) \[rounds: ([\d.]+)-([\d.]+)\]; "
                             r"first call \(compile\) ([\d.]+) s vs ([\d.]+) s", text, re.MULTILINE):
            size, scheduler = m.group(1), m.group(2)
            parity = re.search(rf"^\s*{size} {scheduler}: passed; max \|diff\| ([\d.e+-]+)", text, re.MULTILINE)
            threads = re.search(r"; threads (\d+)", text)
            rows.append((f"generate: MindSpore graph / diffusers eager ({size}, {scheduler})",
                         f"{float(m.group(3)):.2f}",
                         f"candidates/s of the same loop (images within {parity.group(1) if parity else '?'} of "
                         f"diffusers'), {threads.group(1) if threads else '?'} thread(s) each; rounds "
                         f"{m.group(4)}-{m.group(5)}; first call {m.group(6)} s vs {m.group(7)} s"))
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 9 and cells[0] in ("ms-graph", "pt-eager") and cells[7].isdigit():
                rows.append((f"generate vs diffusers peak RSS, {cells[0]} ({cells[1]}, {cells[2]})", f"{cells[7]} MB",
                             "per process"))
    elif name == "personalize":
        for method in ("pmg", "no_personalization"):
            first = _f(rf"request 1 \(\S+\) {method}: ([\d.]+) s", text)
            m = re.search(rf"^{method}: later calls median ([\d.]+) s, graphs compiled (\d+) in (\d+) calls", text,
                          re.MULTILINE)
            if first and m:
                rows.append((f"personalize ({method}): later call / first call", f"{float(m.group(1)) / first:.2f}",
                             f"seconds; graphs compiled after the first call: {m.group(2)} in {m.group(3)} calls"))
    elif name == "train_step":
        for a, b, label in (("ms-graph", "pt-eager", "train step: MindSpore graph / PyTorch eager"),
                            ("ms-pynative", "pt-eager", "train step: MindSpore PyNative / PyTorch eager"),
                            ("ms-graph", "ms-pynative", "train step: graph / PyNative")):
            r = _f(rf"{a} / {b} = ([\d.]+)", text)
            if r is not None:
                rows.append((label, f"{r:.2f}", "steps/s, tiny config"))
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 6 and cells[0].rstrip("*").strip() in ("ms-graph", "ms-pynative", "pt-eager") \
                    and cells[1] == "tiny":
                rows.append((f"train step peak RSS, {cells[0]}", f"{cells[5]} MB", "per process"))
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


def render(outcomes: list[Outcome], load_start, load_end, full: bool) -> str:
    lines = ["# Benchmark results", "",
             f"Written by `python benchmarks/run.py{' --full' if full else ''}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Ratios are measured in one run on one machine; "
             "compare them, not the absolute times, across machines.", "", "## Machine", "", *machine(),
             f"- load average {load_start[0]:.2f} before, {load_end[0]:.2f} after (above ~1.5 on 2 cores the "
             "machine was shared: ratios hold better than absolute times)", "",
             "## Ratios", "", "| benchmark | comparison | ratio | note |", "|---|---|---|---|"]
    for outcome in outcomes:
        rows = ratios(outcome)
        if outcome.code != 0:
            rows = [("failed", f"exit {outcome.code}", "see its output below")]
        for comparison, ratio, note in rows:
            lines.append(f"| {outcome.bench.name} | {comparison} | {ratio} | {note} |")
    lines += ["", "## Peak memory and wall time per benchmark process", "",
              "| benchmark | peak RSS MB | wall s | exit |", "|---|---|---|---|"]
    for outcome in outcomes:
        lines.append(f"| {outcome.bench.name} | {outcome.peak_mb:.0f} | {outcome.seconds:.0f} | {outcome.code} |")
    flops = next((o for o in outcomes if o.bench.name == "flops" and o.code == 0), None)
    if flops is not None:
        lines += ["", "## Ascend 910B throughput at real sizes (Llama-2-7B + SD 1.5): an estimate", "",
                  flops.output.strip()]
    lines += ["", "## Outputs", ""]
    for outcome in outcomes:
        shown = " ".join(Path(c).name if i < 2 else c for i, c in enumerate(outcome.command))
        lines += [f"### {outcome.bench.name}", "", f"`{shown}`",
                  "", "```", _clean(outcome.output), "```", ""]
    return "\n".join(lines)


def _clean(text: str, limit: int = 60) -> str:
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
            print(f"  exit {outcome.code}, {outcome.seconds:.0f} s, peak RSS {outcome.peak_mb:.0f} MB", flush=True)
            for comparison, ratio, note in ratios(outcome):
                print(f"  {comparison}: {ratio} ({note})", flush=True)
    text = render(outcomes, load_start, os.getloadavg(), args.full)
    out = Path(args.out)
    if out.is_file():  # keep the PMG-mini quality section that benchmarks/mini_pmg.py writes
        from mini_pmg import replace_section, START, END

        old = out.read_text(encoding="utf-8")
        if START in old and END in old:
            text = replace_section(text, START + old.split(START, 1)[1].split(END, 1)[0] + END)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"written {args.out}")
    return 0 if all(o.code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
