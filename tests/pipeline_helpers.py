"""Running the whole pipeline in tests: a fast variant of the default config, one shared reference run, and hold
points (research/pmg/testhooks.py) that stop a stage process at an exact place.

The reference run (uninterrupted, made once per session by the ``pipeline_reference`` fixture, whichever
pytest-xdist worker asks first) is moved to ``<base>/reference`` when done, so that other runs can be made at its
original path ``<base>/run``: outputs that record absolute paths (keyword provenance, the generation settings)
then compare byte for byte. Tests only read it: a test that runs the pipeline again works on a copy.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.subprocess_env import stage_env
from tests.tiny_models import REPO

CONFIG = REPO / "configs" / "tiny_pipeline.yaml"
STAGES = ("prepare", "keywords", "train", "generate", "evaluate", "report")
COMPARED = STAGES[:-1]  # the report records timings and the date, so it differs between runs by design
# Small enough for a test, big enough that every stage has work to interrupt (several keyword batches,
# checkpoints at steps 2 and 4, three test samples to generate).
FAST = ("data.max_users=3", "keywords.max_new_tokens=8", "train.max_steps=4", "train.warmup_steps=1",
        "train.save_every=2", "train.eval_every=0", "train.eval_batches=1", "generate.steps=2",
        "evaluate.bootstrap_samples=200", "evaluate.permutations=200")


def command(root: Path, *extra: str, overrides: tuple[str, ...] = ()) -> list[str]:
    args = [sys.executable, "-m", "research.pmg.pipeline", "--config", str(CONFIG),
            "--set", f"runtime.output_dir={root}"]
    for item in (*FAST, *overrides):
        args += ["--set", item]
    return [*args, *extra]


def run_pipeline(root: Path, *extra: str, overrides: tuple[str, ...] = (), **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command(root, *extra, overrides=overrides), cwd=root.parent, env=stage_env(),
                          capture_output=True, text=True, timeout=1200, **kwargs)


def stamps(root: Path) -> dict[str, dict]:
    out = {}
    for stage in STAGES:
        path = root / "pipeline" / f"{stage}.json"
        if path.is_file():
            out[stage] = json.loads(path.read_text())
    return out


def digests(root: Path) -> dict[str, str]:
    """The output digest of every compared stage (all must be done)."""
    found = stamps(root)
    assert all(found.get(s, {}).get("state") == "done" for s in COMPARED), {s: found.get(s) for s in COMPARED}
    return {stage: found[stage]["digest"] for stage in COMPARED}


def reference_run(tmp_path_factory) -> dict[str, object]:
    """``{"base", "path", "proc"}`` of one uninterrupted run, shared by the session's pytest-xdist workers: the first
    to ask makes it under a lock, the others wait for it and read the record (``proc``: the run's command and
    output). Each would otherwise spend minutes making the same run."""
    basetemp = tmp_path_factory.getbasetemp()
    shared = basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp  # the session's folder
    base = shared / "pipeline-reference"
    record = base / "proc.json"
    with open(shared / "pipeline-reference.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.is_file():
            root = base / "run"
            shutil.rmtree(root, ignore_errors=True)  # what a worker that failed here left
            base.mkdir(exist_ok=True)
            proc = run_pipeline(root)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            os.replace(root, base / "reference")
            record.write_text(json.dumps({"args": proc.args, "stdout": proc.stdout, "stderr": proc.stderr}))
    saved = json.loads(record.read_text())
    proc = subprocess.CompletedProcess(saved["args"], 0, saved["stdout"], saved["stderr"])
    return {"base": base, "path": base / "reference", "proc": proc}


HOLD_BOUND = 900  # seconds: a generous failure bound for reaching a hold point, never a measurement


def hold_env(holds: Path, point: str) -> dict[str, str]:
    """The environment that makes the process reaching ``point`` ("<stage>:<point>") wait there, marked in
    the new folder ``holds`` (research/pmg/testhooks.py)."""
    holds.mkdir()
    return dict(stage_env(), PMG_TEST_HOLD=point, PMG_TEST_HOLD_DIR=str(holds))


def wait_for_hold(holds: Path, proc: subprocess.Popen, output: Callable[[], str], rank: str | None = None) -> Path:
    """The marker of the process held at the point (``rank``: msrun's worker of that rank): its name is the pid,
    removing it releases the process. Fails if ``proc`` ends first (``output()``: what it printed). The marker
    stays while the process waits, so this cannot miss it."""
    deadline = time.monotonic() + HOLD_BOUND
    while True:
        for marker in holds.iterdir():
            if not marker.name.startswith(".") and (rank is None or marker.read_text() == rank):
                return marker
        if proc.poll() is not None:
            pytest.fail(f"the process ended before its hold point:\n{output()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no hold point reached in {HOLD_BOUND} s:\n{output()[-3000:]}")
        time.sleep(0.05)


def copy_reference(reference: dict, name: str) -> Path:
    """A private copy of the reference run at ``<base>/<name>``."""
    target = Path(reference["base"]) / name
    shutil.copytree(reference["path"], target, symlinks=True)
    return target
