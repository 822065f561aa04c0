"""scripts/check_ascend.sh, the device self-test, run as a user runs it: on CPU here, against the committed
references, and failing (exit 1, naming the check) when a reference value is off."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from research.pmg.selftest.checks import Check, data_parallel_checks

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "research" / "pmg" / "selftest" / "reference.json"
CHECKS = ["weights", "train_step", "soft_embedding", "generation", "prefix_attention", "length_buckets",
          "data_parallel_replicas", "data_parallel_vs_single", "devices"]


def _check_ascend(tmp_path, *args):
    env = dict(os.environ, VENV=sys.prefix, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", str(REPO / "scripts" / "check_ascend.sh"), "--set",
                           f"runtime.output_dir={tmp_path / 'out'}", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    return done, {line.split(" ", 2)[1].rstrip(":"): line.split(" ", 1)[0] for line in lines}


def test_check_ascend_passes_on_cpu_with_two_workers(tmp_path):
    done, status = _check_ascend(tmp_path, "--nproc", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert status == {name: "PASS" for name in CHECKS}, done.stdout
    assert done.stdout.splitlines()[-1] == f"check_ascend: {len(CHECKS)} passed, 0 failed, 0 skipped"


def test_check_ascend_fails_and_names_the_check_when_a_reference_value_is_off(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    reference["losses"][1] *= 1.01  # 1 %: past the fp32 tolerance (0.2 %), well inside what bf16 would need
    perturbed = tmp_path / "reference.json"
    perturbed.write_text(json.dumps(reference))
    done, status = _check_ascend(tmp_path, "--reference", str(perturbed))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert status["train_step"] == "FAIL"
    assert all(status[name] == "PASS" for name in ("weights", "soft_embedding", "generation", "prefix_attention",
                                                   "length_buckets"))
    assert status["data_parallel"] == "SKIP"
    assert done.stdout.splitlines()[-1] == "check_ascend: 5 passed, 1 failed, 1 skipped (failed: train_step)"


@pytest.mark.parametrize("args, message", [
    (("--set", "train.lr=-1"), "train.lr: must be > 0"),
    (("--reference", "missing.json"), "--reference: missing.json not found"),
    (("--nproc", "0"), "--nproc must be a positive integer"),
])
def test_check_ascend_bad_input_is_one_error_line(tmp_path, args, message):
    done, _ = _check_ascend(tmp_path, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
    assert message in done.stderr


def _rank(rank, device_id, requested=None, params=None):
    return {"rank": rank, "world": 2, "losses": [1.0], "device": ["Ascend", device_id],
            "requested_device_id": requested, "params": params or {"w": [1.0, 2.0]}}


@pytest.fixture
def ascend_runtime(runtime):
    return replace(runtime, device="Ascend", precision="bf16")


def test_workers_on_one_npu_fail_the_devices_check(ascend_runtime):
    single = {"w": np.array([1.0, 2.0], np.float32)}
    by_name = {c.name: c for c in data_parallel_checks([_rank(0, 0), _rank(1, 0)], single, ascend_runtime, 2)}
    assert by_name["devices"].status == "FAIL" and "several workers on one NPU" in by_name["devices"].detail
    assert by_name["devices"].detail.startswith("device id per rank [0, 0]")
    by_name = {c.name: c for c in data_parallel_checks([_rank(0, 0), _rank(1, 1)], single, ascend_runtime, 2)}
    assert [c.status for c in by_name.values()] == ["PASS", "PASS", "PASS"]
    asked = data_parallel_checks([_rank(0, 0, requested=0), _rank(1, 0, requested=0)], single, ascend_runtime, 2)
    assert asked[-1] == Check("devices", "FAIL", "workers asked MindSpore for device ids [0]: msrun could not place them")


def test_replicas_that_drift_apart_fail(ascend_runtime):
    single = {"w": np.array([1.0, 2.0], np.float32)}
    checks = data_parallel_checks([_rank(0, 0), _rank(1, 1, params={"w": [1.0, 2.001]})], single, ascend_runtime, 2)
    assert [c.status for c in checks] == ["FAIL", "PASS", "PASS"]
    missing = data_parallel_checks([_rank(0, 0)], single, ascend_runtime, 2)
    assert [c.status for c in missing] == ["FAIL"]
