"""Bad input aimed at output folders (issue 18, defects 1, 5, 7, 8): the project writes into, replaces or moves
only folders it made itself (research/pmg/ownership.py), every stage command locks what it writes, and a
settings record is written only once the inputs it describes have loaded.

Every case runs as a user would, ``python -m ...`` in a fresh interpreter, among the user's own files: marker
files with known content inside and beside the paths the command is pointed at. A refusal is exit code 2 and
exactly one ``error:`` line, the last on stderr, naming the folder, with no traceback; and afterwards every file
and folder of the case's workspace is as it was, byte for byte (the commands' own logs go to a separate folder).
The stages' inputs are those of the pipeline's reference run (``pipeline_reference`` in conftest.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from research.pmg import ownership
from tests.bad_input_helpers import assert_one_error_line
from tests.pipeline_helpers import CONFIG, copy_reference, hold_env, run_pipeline, stamps, wait_for_hold
from tests.subprocess_env import stage_env

PREPARE, KEYWORDS, TRAIN, GENERATE, EVALUATE = ("research.pmg.data.prepare", "research.pmg.keywords",
                                                "research.pmg.train", "research.pmg.generate",
                                                "research.pmg.evaluate")
UPTO_GENERATE = ("--stages", "prepare,keywords,train,generate")
NOT_OURS = "was not made by this project"


@pytest.fixture(scope="module")
def reference(pipeline_reference):
    return pipeline_reference


def cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=stage_env(), capture_output=True,
                          text=True, timeout=600)


def configured(work: Path, *extra: str) -> list[str]:
    """The tiny pipeline's config, with the run's own files (logs, caches, default outputs) under ``work/o``."""
    return ["--config", str(CONFIG), "--set", f"runtime.output_dir={work / 'o'}", *extra]


def stage_inputs(ref: Path) -> list[str]:
    return ["--data", str(ref / "data"), "--keywords", str(ref / "keywords" / "keywords.jsonl")]


def write_files(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def snapshot(root: Path, skip: tuple[str, ...] = ("o",)) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``, hidden ones too, but the runs' own ``skip``."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        found[str(rel)] = None if path.is_dir() and not path.is_symlink() else path.read_bytes()
    return found


def assert_refused(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, one ``error:`` line (the last on stderr) that contains every one of ``names``, no traceback."""
    line = assert_one_error_line(proc)
    assert all(name in line for name in names), line
    return line


# ---------------------------------------------------------------------------------------------------------------------
# Refusals: each command pointed at something that is not its own, which must stay exactly as it was
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    module: str  # "" for the pipeline
    argv: Callable[[Path, Path], list[str]]  # (workspace, reference run) -> arguments
    target: str  # the path (relative to the workspace) the error must name
    files: dict[str, str] = field(default_factory=dict)  # the user's files, relative to the workspace
    names: tuple[str, ...] = (NOT_OURS,)  # what the error line must say, besides the path
    setup: Callable[[Path, Path], None] = lambda work, ref: None


def _user_report(work: Path, ref: Path) -> None:
    """A copy of the reference run at ``work/run`` whose report never ran there: report.md is the user's."""
    shutil.copytree(ref, work / "run", symlinks=True)
    (work / "run" / "pipeline" / "report.json").unlink()
    (work / "run" / "report.md").write_text("# my own report\n")


def _user_folder_at_the_new_location(work: Path, ref: Path) -> None:
    """A copy of the reference run at ``work/run``; the user's folder at the old code's stale name for it too."""
    shutil.copytree(ref, work / "run", symlinks=True)
    label = stamps(work / "run")["generate"]["key"][:8]
    write_files(work, {f"mine.stale-{label}/m": "keep too\n"})


def _generate(work: Path, ref: Path, out: str) -> list[str]:
    return [*configured(work), *stage_inputs(ref), "--out", str(work / out), "--set", "generate.max_samples=1",
            "--set", "generate.steps=1", "--no-progress"]


def _evaluate(work: Path, ref: Path, out: str) -> list[str]:
    return [*configured(work), *stage_inputs(ref), "--set", "evaluate.metrics=[ssim]", "--method",
            f"x={ref / 'generate' / 'manifest.jsonl'}", "--out", str(work / out), "--set", "evaluate.image_size=64",
            "--set", "evaluate.bootstrap_samples=100", "--set", "evaluate.permutations=100", "--no-progress"]


def _keywords(work: Path, ref: Path, out: str, cache: str = "o/cache") -> list[str]:
    return [*configured(work), "--data", str(ref / "data"), "--out", str(work / out),
            "--set", f"keywords.cache={work / cache}", "--set", "keywords.max_samples=1",
            "--set", "keywords.max_new_tokens=2", "--no-progress"]


def _train(work: Path, ref: Path) -> list[str]:
    return ["--config", str(CONFIG), "--set", f"runtime.output_dir={work / 'r'}",
            "--set", f"runtime.log_dir={work / 'o' / 'log'}", "--set", f"runtime.cache_dir={work / 'o' / 'cache'}",
            "--set", f"data.out={ref / 'data'}", "--set", f"train.keywords={ref / 'keywords' / 'keywords.jsonl'}",
            "--set", "train.max_steps=1", "--set", "train.warmup_steps=0", "--set", "train.eval_every=0",
            "--resume", "--no-progress"]  # as the pipeline runs it: the folder is claimed after the models load


CASES: dict[str, Case] = {
    # defect 8: generate wrote its summary.json over the user's own
    "generate-into-a-user-folder": Case(GENERATE, lambda w, r: _generate(w, r, "h"), target="h",
                                        files={"h/summary.json": '{"mine": true}\n', "h/notes.txt": "keep\n"}),
    "generate-into-another-stage-folder": Case(
        GENERATE, lambda w, r: _generate(w, r, "d"), target="d", names=("holds the outputs of the prepare stage",),
        setup=lambda w, r: shutil.copytree(r / "data", w / "d")),
    # prepare took any folder holding a summary.json for its own and replaced it whole
    "prepare-over-a-user-folder": Case(
        PREPARE, lambda w, r: ["--scenario", "stickers", "--set", "data.max_users=2", "--out", str(w / "p"),
                               "--no-progress"],
        target="p", files={"p/summary.json": '{"mine": true}\n', "p/thesis.tex": "precious\n"}),
    # ... and deleted whatever sat at <out>.partial and <out>.old, its scratch names
    "prepare-beside-user-folders": Case(
        PREPARE, lambda w, r: ["--scenario", "stickers", "--set", "data.max_users=2", "--out", str(w / "q"),
                               "--no-progress"],
        target="q.partial", files={"q.partial/keep.txt": "mine\n", "q.old/keep.txt": "mine too\n"}),
    "evaluate-over-a-user-folder": Case(EVALUATE, lambda w, r: _evaluate(w, r, "e"), target="e",
                                        files={"e/summary.json": '{"mine": true}\n', "e/results.md": "# mine\n"}),
    "keywords-over-a-user-file": Case(KEYWORDS, lambda w, r: _keywords(w, r, "k/keywords.jsonl"),
                                      target="k/keywords.jsonl", names=("was not written by this project",),
                                      files={"k/keywords.jsonl": "my own keywords\n"}),
    "keywords-cache-in-a-user-folder": Case(KEYWORDS, lambda w, r: _keywords(w, r, "o/kw.jsonl", cache="c"),
                                            target="c", files={"c/part-0.jsonl": "my own lines\n"}),
    # the runtime wrote MindSpore/MindFormers logs and caches into whatever folder runtime.log_dir/cache_dir named
    "log-dir-is-a-user-folder": Case(
        GENERATE, lambda w, r: [*_generate(w, r, "g"), "--set", f"runtime.log_dir={w / 'mine'}"], target="mine",
        files={"mine/diary.txt": "keep\n"}),
    "cache-dir-is-another-stage-folder": Case(
        GENERATE, lambda w, r: [*_generate(w, r, "g"), "--set", f"runtime.cache_dir={w / 'd'}"], target="d",
        names=("holds the outputs of the prepare stage",), setup=lambda w, r: shutil.copytree(r / "data", w / "d")),
    "train-into-a-user-folder": Case(TRAIN, _train, target="r/train",
                                     files={"r/train/config.yaml": "mine: true\n", "r/train/notes.txt": "keep\n"}),
    # the pipeline wrote report.md over the user's own when its report had not run in that folder
    "pipeline-report-over-a-user-file": Case(
        "", lambda w, r: [], target="run/report.md", names=("was not written by this project",),
        setup=_user_report),
    # defect 1: the pipeline renamed a folder it never made (the new generate.out) to <folder>.stale-<key>, after
    # deleting what sat at that name
    "pipeline-moves-a-user-folder": Case(
        "", lambda w, r: [*UPTO_GENERATE, "--set", f"generate.out={w / 'mine'}", "--set", "generate.guidance=4.5"],
        target="mine", files={"mine/m": "keep\n"}, setup=_user_folder_at_the_new_location),
}


@pytest.fixture(scope="module")
def refusals(reference, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, dict, dict]]:
    """Every case run, two at a time: ``{name: (workspace, process, snapshot before, snapshot after)}``."""
    base = tmp_path_factory.mktemp("outputs")
    ref = Path(reference["path"])

    def one(name: str):
        case, work = CASES[name], base / name
        work.mkdir()
        case.setup(work, ref)
        write_files(work, case.files)
        before = snapshot(work)
        if case.module:
            proc = cli(case.module, *case.argv(work, ref), cwd=work)
        else:
            proc = run_pipeline(work / "run", *case.argv(work, ref))
        return name, (work, proc, before, snapshot(work))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_a_folder_or_file_that_is_not_the_stage_s_own_is_refused_and_left_untouched(name, refusals):
    work, proc, before, after = refusals[name]
    case = CASES[name]
    assert_refused(proc, str(work / case.target), *case.names)
    assert after == before  # nothing moved, renamed, overwritten, added or removed


# ---------------------------------------------------------------------------------------------------------------------
# The pipeline sets aside only what its stamp recorded, and never over something already there
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_set_aside_moves_only_the_recorded_folder_and_only_when_it_is_the_project_s(reference, tmp_path, marked):
    """A changed generation setting and a new generate.out (an empty folder of the user's): the folder the stamp
    recorded is set aside, not the new one, without replacing what sits at its stale name, and only when it carries
    the marker. Generation then fails at once (no checkpoint there), so the set-aside is all that happens."""
    root = copy_reference(reference, f"outputs-aside-{'marked' if marked else 'unmarked'}")
    try:
        label = stamps(root)["generate"]["key"][:8]
        recorded, user, new = root / "generate", root / f"generate.stale-{label}", tmp_path / "new"
        if not marked:  # as left by an older version, or a folder a user put there
            (recorded / ownership.MARKER).unlink()
        write_files(user, {"keep.txt": "mine\n"})
        new.mkdir()
        before = snapshot(recorded)
        proc = run_pipeline(root, *UPTO_GENERATE, overrides=(f"generate.out={new}",
                                                             f"generate.soft_checkpoint={tmp_path / 'absent'}"))
        assert_refused(proc, "stage generate failed (exit 2)", "no soft_preference.ckpt there")
        assert snapshot(user) == {"keep.txt": b"mine\n"}
        assert [p.name for p in tmp_path.iterdir()] == ["new"] and not any(new.iterdir())
        moved = root / f"generate.stale-{label}-2"
        if marked:
            assert f"old outputs moved to {moved}" in proc.stdout, proc.stdout
            assert snapshot(moved) == before and not recorded.exists()
        else:
            assert f"left {recorded} in place" in proc.stdout, proc.stdout
            assert snapshot(recorded) == before and not moved.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Defects 7 and 5: a failed run leaves no settings behind; two runs on one folder cannot both write
# ---------------------------------------------------------------------------------------------------------------------
def test_failed_runs_leave_no_settings_and_a_second_run_on_the_folder_fails_fast(reference, tmp_path):
    ref = Path(reference["path"])
    out = tmp_path / "g"
    (tmp_path / "t.ckpt").write_text("not a checkpoint\n")
    # one sample per UNet call (A is held between two of them); PyNative: no graphs to compile for a few calls
    argv = [*configured(tmp_path, "--set", "runtime.mode=pynative"), *stage_inputs(ref), "--out", str(out),
            "--set", "generate.max_samples=2", "--set", "generate.steps=2", "--set", "generate.micro_batch=3",
            "--no-progress"]
    # defect 7: inputs that fail to load must not bind the folder to their settings
    for bad, message in ((["--soft-checkpoint", str(tmp_path / "t.ckpt")], "cannot be read"),
                         (["--set", f"models.diffusion.path={tmp_path / 'nowhere'}"], "has no 'unet' folder")):
        assert_refused(cli(GENERATE, *argv, *bad, cwd=tmp_path), message)
        assert not (out / "settings.json").exists()

    # defect 5: the corrected run (A) waits at a hold point (research/pmg/testhooks.py) right after its first sample,
    # holding the folder; a second run (B) must fail at once naming A, leaving A's outputs as they were; A, released,
    # then finishes alone.
    good = [*argv, "--soft-checkpoint", str(ref / "train")]
    holds = tmp_path / "holds"
    first = subprocess.Popen([sys.executable, "-m", GENERATE, *good], cwd=tmp_path,
                             env=hold_env(holds, "generate:sample-written"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    marker = None
    try:
        marker = wait_for_hold(holds, first, lambda: first.communicate()[0] if first.poll() is not None else "")
        assert int(marker.name) == first.pid and len((out / "manifest.jsonl").read_text().splitlines()) == 1
        before = snapshot(out)
        second = cli(GENERATE, *good, cwd=tmp_path)
        assert_refused(second, str(out), f"in use by another run (pid {first.pid})")
        assert snapshot(out) == before
        marker.unlink()  # A goes on
    finally:
        if marker is None or marker.exists():  # not released: a failure above; A would wait forever
            first.kill()
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    samples = [json.loads(line)["sample"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(samples) == 2 == len(set(samples)), samples
    settings = json.loads((out / "settings.json").read_text())
    assert settings["soft_checkpoint"].startswith(str((ref / "train").resolve()))


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    """The lock is the OS's (flock): it goes with the process that held it, whatever state its file was left in."""
    folder = tmp_path / "g"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from research.pmg import ownership\n"
                               f"with ownership.claim(Path({str(folder)!r}), 'generate'):\n"
                               "    print('held', flush=True); time.sleep(600)"],
        cwd=tmp_path, env=stage_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ownership.InUseError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            with ownership.claim(folder, "generate"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (folder / ownership.LOCK).is_file()  # left behind by the killed run
    with ownership.claim(folder, "generate"):
        assert (folder / ownership.LOCK).read_text().strip() == str(os.getpid())


def test_every_stage_command_locks_its_output(tmp_path):
    """A folder replaced whole (prepare, evaluate) is locked beside it: held here, prepare fails at once."""
    out = tmp_path / "p"
    with ownership.hold(ownership.sibling_lock(out), out):
        proc = cli(PREPARE, "--scenario", "stickers", "--set", "data.max_users=2", "--out", str(out), "--no-progress",
                   cwd=tmp_path)
    assert_refused(proc, str(out), f"in use by another run (pid {os.getpid()})")
    assert not out.exists()
