"""Fault tolerance: killed stages resume to identical outputs, damaged files are caught by checksum, a full disk or
an unwritable folder fails cleanly, and a dead msrun worker is named.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from research.pmg.pipeline.runner import damaged_files
from tests.pipeline_helpers import (COMPARED, STAGES, command, copy_reference, digests, hold_env, run_pipeline,
                                    stamps, wait_for_hold)


@pytest.fixture(scope="module")
def reference(pipeline_reference):
    return pipeline_reference


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _running(root: Path, stage: str) -> bool:
    return stamps(root).get(stage, {}).get("state") == "running"


# Where each stage is killed: a hold point the stage process itself reaches (research/pmg/testhooks.py: with
# PMG_TEST_HOLD=<stage>:<point> it marks that it is there and waits), and what is on disk at that moment.
KILL_POINTS = {
    # every image copied into the staging folder, no item list yet
    "prepare": ("prepare:images-copied",
                lambda root: any((root / "data.partial" / "images").iterdir())
                and not (root / "data.partial" / "items.jsonl").exists()),
    # the first batch of answers cached
    "keywords": ("keywords:batch-cached", lambda root: _lines(root / "keywords" / "cache" / "part-0.jsonl") >= 1),
    # step 3 of 4 run: the checkpoint of step 2 written, step 3 not logged
    "train": ("train:step-3", lambda root: (root / "train" / "checkpoints" / "step-000002" / "meta.json").is_file()
              and _lines(root / "train" / "train_log.jsonl") == 2),
    # 1 of 3 samples in the manifest
    "generate": ("generate:sample-written", lambda root: _lines(root / "generate" / "manifest.jsonl") == 1),
    # scored; the report folder half written
    "evaluate": ("evaluate:report-started", lambda root: (root / "evaluate.partial" / "per_sample.csv").is_file()
                 and not (root / "evaluate.partial" / "summary.json").exists()),
}


def _kill_during(root: Path, stage: str, log: Path) -> str:
    """Start the pipeline, SIGKILL its whole process group once ``stage`` is held at its kill point; its stdout."""
    point, on_disk = KILL_POINTS[stage]
    holds = root.parent / f"holds-{stage}"
    with open(log, "w") as handle:
        proc = subprocess.Popen(command(root), cwd=root.parent, env=hold_env(holds, point), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_hold(holds, proc, lambda: log.read_text(errors="replace"))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _running(root, stage) and on_disk(root), f"{stage}: not at its kill point"
    return log.read_text()


def test_sigkill_during_each_stage_then_rerun_gives_the_uninterrupted_outputs(reference):
    base = Path(reference["base"])
    root = base / "run"  # where the reference was made: outputs that record paths compare byte for byte
    assert not root.exists()
    try:
        for number, stage in enumerate(COMPARED):
            out = _kill_during(root, stage, base / f"killed-{stage}.log")
            if number:  # the stage before was interrupted by the last kill and continued in this run
                assert f"{COMPARED[number - 1]}: interrupted last time; continuing" in out, out
        # the last kill left evaluate's half-written report folder beside the previous (absent) one
        assert (root / "evaluate.partial").is_dir() and not (root / "evaluate").exists()
        proc = run_pipeline(root)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "evaluate: interrupted last time; continuing" in proc.stdout
        assert digests(root) == digests(Path(reference["path"]))
        assert not (root / "evaluate.partial").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_is_detected_and_training_resumes_from_an_intact_one(reference):
    root = copy_reference(reference, "damaged")
    _flip_byte(root / "train" / "checkpoints" / "step-000004" / "soft_preference.ckpt")
    proc = run_pipeline(root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "train: 1 output file(s) changed or missing since the stage finished (checksum)" in out, out
    assert "set aside the damaged checkpoint step-000004" in out
    assert (root / "train" / "checkpoints" / ".corrupt-step-000004").is_dir()
    # retrained from step 2 to the same bytes, so nothing after training has to run again
    assert digests(root)["train"] == digests(Path(reference["path"]))["train"]
    assert "generate: up to date (skipped)" in out and "evaluate: up to date (skipped)" in out
    train_log = (root / "log" / "pipeline" / "train.log").read_text()
    assert "trained 4 steps" in train_log


def test_damaged_checkpoint_is_never_loaded(tmp_path):
    import mindspore as ms
    from mindspore import nn

    from research.pmg.integrity import CorruptFileError, write_sidecar
    from research.pmg.models.weights import load_checkpoint_into

    cell = nn.Dense(4, 3)
    path = tmp_path / "w.ckpt"
    ms.save_checkpoint(cell, str(path))
    write_sidecar(path)
    load_checkpoint_into(nn.Dense(4, 3), path, what="test")  # intact: loads
    _flip_byte(path)
    with pytest.raises(CorruptFileError, match="w.ckpt: checksum mismatch"):
        load_checkpoint_into(nn.Dense(4, 3), path, what="test")


def test_damaged_keyword_cache_line_is_asked_again(tmp_path):
    from research.pmg.keywords.cache import AnswerCache

    with AnswerCache(tmp_path) as cache:
        cache.put_many([("k1", "m", "t", "cute, round"), ("k2", "m", "t", "blue")])
    part = tmp_path / "part-0.jsonl"
    part.write_text(part.read_text().replace("cute, round", "cute, rounb"))  # still valid JSON
    with AnswerCache(tmp_path) as cache:
        assert "k1" not in cache and cache.get("k2") == "blue" and cache.torn_lines == 1


def test_damaged_training_cache_is_rebuilt(tmp_path, capsys):
    from research.pmg.examples import Example
    from research.pmg.train.dataset import build_arrays

    image = tmp_path / "x.png"
    image.write_bytes(b"png")
    examples = [Example("s1", "train", "prompt", "cat", "cute", image)]
    calls = []

    def encode_images(paths):
        calls.append("images")
        return np.ones((len(paths), 8, 2, 2), np.float32)

    build = lambda: build_arrays(examples, tmp_path / "cache", {"m": 1},  # noqa: E731
                                 tokenize=lambda p: np.ones((len(p), 4), np.int32), encode_images=encode_images,
                                 encode_texts=lambda t: np.ones((len(t), 3, 2), np.float32))
    build()
    build()
    assert calls == ["images"]  # cached
    (cached,) = (tmp_path / "cache").glob("train-*/latent_moments.npy")
    _flip_byte(cached)
    arrays = build()
    assert calls == ["images", "images"] and float(np.asarray(arrays.latent_moments).min()) == 1.0
    assert "do not match their checksums; rebuilding" in capsys.readouterr().err


def test_full_disk_fails_with_one_clear_line_and_keeps_earlier_outputs(reference):
    root = copy_reference(reference, "full-disk")
    before = (root / "data" / "items.jsonl").read_bytes()
    limit = 2048  # bytes per file: the images and logs fit, items.jsonl (~3 kB) does not, as on a full disk

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_pipeline(root, "--force", "prepare", overrides=(f"runtime.log_dir={root / 'log-full'}",),
                        preexec_fn=small_disk)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]  # a full disk is the user's to fix
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stage prepare failed (exit 2): "), proc.stderr
    assert "items.jsonl: File too large while writing" in lines[0] and "prepare.log" in lines[0], lines[0]
    # the prepared folder is swapped in whole or not at all: the earlier one is untouched, nothing half-written
    assert (root / "data" / "items.jsonl").read_bytes() == before and not (root / "data.partial").exists()
    found = stamps(root)
    assert found["prepare"]["state"] == "running"  # the next run prepares again
    for stage in STAGES[1:]:
        assert found[stage]["state"] == "done" and damaged_files(found[stage], root) == []
    assert damaged_files({"files": reference_files(reference, "prepare")}, root) == []  # the data, as made


def reference_files(reference, stage: str) -> dict:
    return stamps(Path(reference["path"]))[stage]["files"]


def test_unwritable_output_folder_fails_with_one_line_and_keeps_earlier_outputs(reference):
    root = copy_reference(reference, "unwritable")
    (root / "blocker").write_text("a file where a folder should be\n")
    proc = run_pipeline(root, overrides=(f"generate.out={root / 'blocker' / 'generate'}",))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stage generate failed (exit 2):"), proc.stderr
    assert "Not a directory" in lines[0] and "blocker" in lines[0] and "generate.log" in lines[0]
    found = stamps(root)
    assert found["generate"]["state"] == "running"
    for stage in ("prepare", "keywords", "train", "evaluate"):
        assert found[stage]["state"] == "done" and damaged_files(found[stage], root) == []


def test_dead_msrun_worker_fails_the_stage_and_names_its_log(reference):
    root = copy_reference(reference, "msrun")
    logs = root / "log" / "pipeline" / "msrun_train"
    holds = root.parent / "holds-msrun"
    log = root.parent / "msrun-pipeline.log"
    with open(log, "w") as handle:  # both workers hold after their first step; worker 1 is killed there
        proc = subprocess.Popen(command(root, "--nproc", "2", "--force", "train"), cwd=root.parent,
                                env=hold_env(holds, "train:step-1"), stdout=handle, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            worker_1 = wait_for_hold(holds, proc, lambda: log.read_text(errors="replace"), rank="1")
            os.kill(int(worker_1.name), signal.SIGKILL)
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for marker in holds.iterdir():  # releases a worker that outlived the job, should one have
                marker.unlink()
    assert proc.returncode != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stage train failed"), stderr
    assert f"worker log: {logs / 'worker_1.log'}" in lines[0] and "SIGKILL" in lines[0], lines[0]
    found = stamps(root)
    assert found["train"]["state"] == "running" and found["keywords"]["state"] == "done"
