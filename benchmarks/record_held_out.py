"""Record PMG-mini's held-out evaluation (400 new users) so that CI can re-check it without re-running it.

    python -m research.pmg.data.sticker_set --out output/mini_world400/raw --users 400 --events 10 --seed 3
    bash scripts/run_pipeline.sh configs/mini/held_out_400.yaml          # ~30 min on 2 cores
    python benchmarks/record_held_out.py --run output/mini_400 --world output/mini_world400/raw

writes ``benchmarks/records/mini_400/``:

    summary.json     the evaluation's summary (the run and world folders written as <run> and <world>)
    per_sample.csv   every sample's scores for PMG and no personalization (what the intervals are computed from)
    inputs.json      what decides the numbers: the resolved config, and the sha256 of every mini model file, the world
                     (raw files), the prepared data, the keywords file and the trained soft preference; the
                     commit, the command, the machine and its load

tests/test_mini_pmg.py re-checks a record: its inputs against today's configs, models and a rebuilt world,
its intervals against its per-sample scores, and the acceptance rule on it. A change to any input makes the
record stale (the test says so) until this is run again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.pmg.integrity import sha256_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "benchmarks" / "records" / "mini_400"
CONFIG = "configs/mini/held_out_400.yaml"
MODELS = "research/pmg/assets/mini"


def tree_digests(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (hidden markers and ``skip`` folders left out)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts) \
                and not rel.startswith(skip):
            out[rel] = sha256_file(path)
    return out


def resolved_config() -> dict:
    """The held-out config as loaded (its base chain applied, defaults filled in), without the two folders a run
    names on its command line: a comment or a reordering in a YAML file does not change it, a value does."""
    from research.pmg.config import load_config

    cfg = load_config(REPO / CONFIG).to_dict()
    cfg["runtime"]["output_dir"] = cfg["data"]["raw"] = "<given>"
    cfg.pop("source", None)
    return cfg


def inputs(run: Path, world: Path) -> dict:
    """What decides the recorded numbers, as checksums (see the module docstring)."""
    from research.pmg.models.soft_preference import resolve_soft_checkpoint

    return {"config": resolved_config(),
            "models": tree_digests(REPO / MODELS, skip=("world/",)),
            "world": tree_digests(world),
            "data": tree_digests(run / "data"),
            "keywords": sha256_file(run / "keywords" / "keywords.jsonl"),
            "soft_checkpoint": sha256_file(resolve_soft_checkpoint(run / "train"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the output folder of configs/mini/held_out_400.yaml")
    p.add_argument("--world", required=True, help="the raw world folder the run read (data.raw)")
    p.add_argument("--commit", help="the commit the run was made at (default: HEAD now)")
    p.add_argument("--load", default="", help="the load average during the run, as measured (recorded as given)")
    args = p.parse_args()
    run, world = Path(args.run).resolve(), Path(args.world).resolve()
    summary_text = (run / "evaluate" / "summary.json").read_text(encoding="utf-8")
    per_sample = (run / "evaluate" / "per_sample.csv").read_text(encoding="utf-8")
    commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout.strip()
    record = {"inputs": inputs(run, world), "commit": commit,
              "command": ["python -m research.pmg.data.sticker_set --out WORLD --users 400 --events 10 --seed 3",
                          "python -m research.pmg.pipeline --config configs/mini/held_out_400.yaml "
                          "--set runtime.output_dir=RUN --set data.raw=WORLD"],
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_average_during_run": args.load}}
    tmp = RECORD.with_name(RECORD.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    def portable(text: str) -> str:
        return text.replace(str(run), "<run>").replace(str(world), "<world>")

    (tmp / "summary.json").write_text(portable(summary_text), encoding="utf-8")
    (tmp / "per_sample.csv").write_text(portable(per_sample), encoding="utf-8")
    (tmp / "inputs.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if RECORD.exists():
        shutil.rmtree(RECORD)
    tmp.rename(RECORD)
    print(f"recorded {run} -> {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
