"""``python -m research.pmg.selftest [--nproc N] [--config CONFIG] [--set k=v]``: the device self-test.

What ``scripts/check_ascend.sh`` runs before a real job: tiny PMG models through training, the soft preference
and generation on this device, compared with the committed CPU fp32 reference; prefix attention with flash
attention on and off; with ``--nproc`` >= 2, data parallel over msrun against one worker and one device per
worker. One PASS/FAIL/SKIP line per check and a summary; exit 1 on any FAIL. ``--write-reference`` (CPU, fp32)
re-makes the reference after a deliberate change of the tiny models or the checks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # msrun runs this file as a script
    sys.path.insert(0, str(REPO))

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run  # noqa: E402
from research.pmg.errors import PMGError  # noqa: E402
from research.pmg.files import write_atomic  # noqa: E402

DEFAULT_CONFIG = str(REPO / "configs" / "selftest.yaml")
PER_WORKER_BATCH = 2


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m research.pmg.selftest", description=__doc__.splitlines()[0])
    add_config_args(parser, DEFAULT_CONFIG)
    parser.add_argument("--nproc", type=int, default=1, help="msrun workers for the data-parallel checks (>= 2)")
    parser.add_argument("--reference", type=Path, default=None, help="reference values (default: the committed ones)")
    parser.add_argument("--write-reference", action="store_true", help="measure on CPU in fp32 and write --reference")
    parser.add_argument("--dp-results", type=Path, default=None, help=argparse.SUPPRESS)  # set by the msrun launch
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error("--nproc must be >= 1")
    cfg = config_from_args(args)

    from research.pmg.runtime import CHIPS, setup_runtime
    from research.pmg.selftest import checks as ck

    reference_path = args.reference or ck.REFERENCE
    if args.dp_results is None and not args.write_reference and not reference_path.is_file():
        raise PMGError(f"--reference: {reference_path} not found")
    runtime = setup_runtime(cfg.runtime)
    if args.dp_results is not None:
        return worker(cfg, runtime, args.dp_results)

    print(f"check_ascend: device {runtime.device}{' ' + runtime.chip if runtime.chip else ''}, mode {runtime.mode}, "
          f"precision {runtime.precision}, flash attention {'on' if runtime.flash_attention else 'off'}", flush=True)
    report: list[ck.Check] = []

    def emit(found: list[ck.Check]) -> None:
        for check in found:
            report.append(check)
            print(check.line(), flush=True)

    if runtime.device == "Ascend" and runtime.chip not in CHIPS:
        emit([ck.Check("chip", "FAIL", f"MindSpore reports chip {runtime.chip!r}, which the runtime does not know: "
                                       "precision and flash attention fell back to fp16 / off")])
    models = ck.build_models(cfg, runtime, PER_WORKER_BATCH)
    batch = ck.synthetic_batch(cfg, models.sd, PER_WORKER_BATCH, cfg.runtime.seed)
    measured = ck.measure(models, batch)
    if args.write_reference:
        if runtime.device != "CPU" or runtime.precision != "fp32":
            raise PMGError("--write-reference: references are measured on CPU in fp32 (set runtime.device=CPU)")
        write_atomic(reference_path, json.dumps({"config": Path(cfg.source).name, **measured}) + "\n")
        print(f"wrote {reference_path}")
        return 0
    emit(ck.reference_checks(measured, ck.load_reference(reference_path), runtime.precision))
    emit([ck.prefix_attention_check(cfg, runtime, batch)])
    emit([ck.length_bucket_check(models, batch)])
    if args.nproc > 1:
        emit(data_parallel(cfg, runtime, args, models.sd))
    else:
        emit([ck.Check("data_parallel", "SKIP", "one process (run with --nproc 2 or more)")])
    counts = {status: sum(c.status == status for c in report) for status in ("PASS", "FAIL", "SKIP")}
    failed = [c.name for c in report if c.status == "FAIL"]
    print(f"check_ascend: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
          + (f" (failed: {', '.join(failed)})" if failed else ""), flush=True)
    return 1 if failed else 0


def worker(cfg, runtime, out: Path) -> int:
    """One msrun worker: its slice of the global batch for the data-parallel steps, results to ``out``."""
    from research.pmg.selftest import checks as ck

    models = ck.build_models(cfg, runtime, PER_WORKER_BATCH)
    batch = ck.synthetic_batch(cfg, models.sd, PER_WORKER_BATCH * runtime.world_size, cfg.runtime.seed)
    rows = slice(runtime.rank * PER_WORKER_BATCH, (runtime.rank + 1) * PER_WORKER_BATCH)
    losses = ck.train(models, batch, ck.DP_STEPS, rows)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"rank-{runtime.rank}.json"
    write_atomic(target, json.dumps(ck.worker_record(models, losses)))
    return 0


def data_parallel(cfg, runtime, args, sd) -> list:
    """msrun ``args.nproc`` workers of this script, then one process on the whole global batch, compared."""
    from research.pmg.selftest import checks as ck

    batch = ck.synthetic_batch(cfg, sd, PER_WORKER_BATCH * args.nproc, cfg.runtime.seed)

    out = runtime.output_dir / "selftest_dp"
    shutil.rmtree(out, ignore_errors=True)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    msrun = shutil.which("msrun", path=path)
    if msrun is None:
        return [ck.Check("data_parallel", "FAIL", "msrun (installed with MindSpore) is not on PATH")]
    env = dict(os.environ, PATH=path, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                                os.environ.get("PYTHONPATH")])))
    command = [msrun, f"--worker_num={args.nproc}", f"--local_worker_num={args.nproc}",
               f"--master_port={_free_port()}", f"--log_dir={out / 'log'}", "--join=True", __file__,
               "--config", args.config, *[x for item in args.overrides for x in ("--set", item)], "--dp-results", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        logs = sorted((out / "log").glob("worker_*.log"))
        lines = logs[-1].read_text(errors="replace").splitlines()[-3:] if logs else done.stderr.splitlines()[-3:]
        tail = " | ".join(line.strip() for line in lines if line.strip())
        return [ck.Check("data_parallel", "FAIL", f"msrun exited {done.returncode}; worker log: {tail[-400:]}")]
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    single = ck.build_models(cfg, runtime, PER_WORKER_BATCH * args.nproc)
    ck.train(single, batch, ck.DP_STEPS)
    return ck.data_parallel_checks(ranks, ck.trainable_values(single), runtime, args.nproc)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(run(main))
