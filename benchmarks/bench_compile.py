"""First-step time of the tiny training step: cold compile vs MindSpore's compile cache (warm).

    python benchmarks/bench_compile.py                      # 3 rounds: cold, fill, warm in each
    python benchmarks/bench_compile.py --rounds 5 --steps 3
    python benchmarks/bench_compile.py --unbranched         # the step without TrainStep's runtime branch (see below)

The step is the project's own, built as ``benchmarks/bench_train_step.py`` builds it (configs/tiny.yaml, a fixed
batch, ``build_train_step``). Each run is a fresh interpreter; in each round the variants run one after the other,
so a shared machine's load hits them alike:

- ``cold``: no compile cache, the default.
- ``fill``: the compile cache on, in an empty folder of this round: a cold compile that also writes the cache.
- ``warm``: the compile cache on, in the folder ``fill`` just wrote.

Reported per run: first step (graph compile included), the median of the later steps, how many graphs MindSpore
says it took from the cache ("Use the compilation cache" in its log), and whether the losses and the trained
parameters are bit-identical to the round's ``cold`` run. The table gives the median over rounds.

What this measures on MindSpore 2.7.2, CPU: the cache holds the frontend graph only (the backend's kernel-graph
cache is Ascend-only: "Disable backend compile cache by invalid backend type"), and the project's step cannot
be loaded from it: MindONE's ``TrainStep`` branches on ``GradAccumulator.sync_gradients``, a Parameter of an
``ms.jit_class`` object, and a loaded graph reads that condition from the wrong place ("IndexError: Given index N
out of range ... [-2, 2)", N varying run to run). ``--unbranched`` replaces ``TrainStep.construct`` by the same
body without that ``if`` (valid with one accumulation step, the tiny config's): then the cache loads, and the
identity column shows whether the warm step still computes what the cold one does.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train_step import bench_config, build_mindspore, make_batch  # noqa: E402

VARIANTS = ("cold", "fill", "warm")
CACHE_LOADED = "Use the compilation cache"  # MindSpore's warning for each graph it takes from the cache
LOADED = 1.5  # 1-minute load average above which the report says the machine was busy


def unbranched_construct(self, *inputs):
    """MindONE ``TrainStep.construct`` with one accumulation step: the ``if self.sync_gradients`` body, always."""
    outputs, grads = self.forward_and_backward(*inputs)
    grads = self.grad_accumulator.step(grads)
    grads = self.grad_scaler.unscale(grads)
    grads = self.grad_clipper.clip_grad_norm(grads)
    self.grad_scaler.step(self.optimizer, grads)
    self.grad_scaler.update()
    self.grad_accumulator.zero_grad()
    return (self.unscale_loss(outputs[0]),) + outputs[1:]


def worker(args: argparse.Namespace) -> None:
    """One fresh process: build the tiny step, time its first and later steps, fingerprint what it computed."""
    import mindspore as ms
    from mindone.diffusers.training_utils import TrainStep

    from research.pmg.train.step import build_train_step

    cfg = bench_config("tiny", args.set, str(Path(args.work) / "output"), "graph", max_steps=1000)
    if args.unbranched:
        if cfg.train.grad_accum_steps != 1:
            raise SystemExit("--unbranched needs train.grad_accum_steps=1")
        TrainStep.construct = unbranched_construct
    started = time.perf_counter()
    _, _, loss_net = build_mindspore(cfg)
    step_cell, _ = build_train_step(loss_net, cfg.train)
    inputs = [ms.Tensor(v) for v in make_batch(cfg).values()]
    build_s = time.perf_counter() - started
    times, losses = [], []
    for _ in range(1 + args.steps):
        start = time.perf_counter()
        losses.append(float(step_cell(*inputs)[0].asnumpy()))
        times.append(time.perf_counter() - start)
    digest = hashlib.sha256()
    for param in sorted(loss_net.trainable_params(), key=lambda p: p.name):
        digest.update(param.name.encode() + param.asnumpy().tobytes())
    print("RESULT " + json.dumps(dict(build_s=round(build_s, 2), first_step_s=round(times[0], 3),
                                      later_s=statistics.median(times[1:]) if args.steps else None,
                                      losses=[repr(x) for x in losses], digest=digest.hexdigest()[:16])), flush=True)


def launch(variant: str, cache: Path, work: Path, args: argparse.Namespace) -> dict:
    """Run one worker in ``work``; its RESULT, the graphs MindSpore loaded from the cache, wall time and load."""
    work.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--work", str(work), "--steps", str(args.steps)]
    cmd += [x for s in args.set for x in ("--set", s)] + (["--unbranched"] if args.unbranched else [])
    env = dict(os.environ, GLOG_v="2", GLOG_logtostderr="1", PYTHONWARNINGS="ignore")
    env.pop("MS_COMPILER_CACHE_ENABLE", None)
    if variant != "cold":
        # research.pmg.runtime refuses the cache unless told this is an experiment
        env.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=str(cache), PMG_ALLOW_COMPILE_CACHE="1")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        record = json.loads(lines[-1][7:])
    else:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line and not line.startswith("[")]
        record = dict(error=(errors[-1] if errors else proc.stderr[-500:]).strip())
    record.update(variant=variant, loaded=proc.stderr.count(CACHE_LOADED),
                  wall_s=round(time.perf_counter() - started, 1), load_before=round(load, 2))
    return record


def describe(record: dict, reference: dict | None) -> str:
    head = f"round {record['round']} {record['variant']:4s} (load {record['load_before']:.2f}): "
    if "error" in record:
        return head + f"failed after {record['wall_s']} s, {record['loaded']} graph(s) loaded: {record['error'][:160]}"
    same = "-" if reference is None or "error" in reference else \
        "yes" if (record["losses"], record["digest"]) == (reference["losses"], reference["digest"]) else "NO"
    return (head + f"first step {record['first_step_s']:.2f} s, later {record['later_s'] or 0:.3f} s, build "
            f"{record['build_s']:.1f} s, {record['loaded']} graph(s) from the cache, identical to cold: {same} "
            f"(losses {', '.join(record['losses'])})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps after the first (their losses are compared too)")
    p.add_argument("--unbranched", action="store_true", help="TrainStep.construct without its runtime branch")
    p.add_argument("--set", action="append", default=[], help="config override for tiny.yaml (repeatable)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    records: list[dict] = []
    load_start = os.getloadavg()
    print(f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at start "
          f"({os.cpu_count()} cores){'; shared machine: compare rows of one round' if load_start[0] > LOADED else ''}")
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        for round_ in range(1, args.rounds + 1):
            cache, cold = Path(tmp) / f"cache-{round_}", None
            for variant in VARIANTS:
                record = dict(launch(variant, cache, Path(tmp) / f"run-{round_}-{variant}", args), round=round_)
                cold = record if variant == "cold" else cold
                records.append(record)
                print(describe(record, None if variant == "cold" else cold), flush=True)
    print("\n| variant | first step s, median (per round) | later steps s | graphs from cache | identical to cold |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        runs = [r for r in records if r["variant"] == variant]
        ok = [r for r in runs if "error" not in r]
        colds = {r["round"]: r for r in records if r["variant"] == "cold" and "error" not in r}
        same = [(r["losses"], r["digest"]) == (colds[r["round"]]["losses"], colds[r["round"]]["digest"])
                for r in ok if r["round"] in colds]
        per_round = ", ".join(f"{r['first_step_s']:.2f}" for r in ok)
        first = f"{statistics.median(r['first_step_s'] for r in ok):.2f} ({per_round})" if ok else "-"
        later = f"{statistics.median(r['later_s'] for r in ok if r['later_s'] is not None):.3f}" \
            if ok and args.steps else "-"
        failed = f"; {len(runs) - len(ok)} of {len(runs)} failed" if len(ok) < len(runs) else ""
        print(f"| {variant} | {first}{failed} | {later} | {', '.join(str(r['loaded']) for r in runs)} | "
              f"{'-' if variant == 'cold' else f'{sum(same)} of {len(same)}'} |")
    load_end = os.getloadavg()
    print(f"\nload average {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
