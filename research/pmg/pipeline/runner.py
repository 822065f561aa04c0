"""Run the stages in order, skipping those whose stamp shows complete, unchanged, up-to-date outputs.

Each stage is a separate process (``python -m research.pmg.<stage>``, or ``msrun`` over its ``__main__.py``
with ``--nproc`` > 1). Separate processes because every stage sets up MindSpore once for itself (device,
mode, compat layer, msrun membership), because a killed or crashed stage then takes nothing of the pipeline's
state with it, and because the multi-worker case is msrun's own command line. Stage output goes to
``<log_dir>/pipeline/<stage>.log``.

State lives in ``<output_dir>/pipeline/``: ``<stage>.json`` is written (atomically) with ``"state": "running"``
and the stage's key before it starts, and replaced with ``"state": "done"``, the SHA-256 of every output file
and their combined digest after it succeeded. On the next run a stage is

- skipped when it is done with the same key and every recorded file still has its checksum;
- re-run, continuing its own resumable work (keyword cache, training checkpoints, generation manifest), when
  it was running with the same key: the run before was interrupted;
- re-run from scratch when its key changed (settings or inputs differ): its resumable outputs, as its stamp recorded
  them (not wherever the config points now), are moved to ``<folder>.stale-<old key>`` first, never mixed with new
  ones, and only when they carry the project's marker (:mod:`research.pmg.ownership`);
- repaired and re-run when recorded files changed after they were written: damaged training checkpoints are
  set aside (``checkpoints/.corrupt-step-*``) and training resumes from the newest intact one; other stages
  are rebuilt.

Before a stage runs, every folder and file it will write is checked against the ownership rule
(:mod:`research.pmg.ownership`): a folder someone else made stops the pipeline with one error, before anything is
moved. The state folder's lock keeps two pipelines off one output folder; each stage command also locks its own.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from research.pmg import ownership
from research.pmg.config import PMGConfig
from research.pmg.errors import PMGError
from research.pmg.files import write_atomic
from research.pmg.integrity import sha256_file
from research.pmg.layout import Layout
from research.pmg.pipeline.stages import BY_NAME, STAGES, Stage, pinned, stage_key

REPO = Path(__file__).resolve().parents[3]
USER_ERROR = 2


class StageFailed(Exception):
    """A stage exited non-zero; ``message`` is one line naming the stage, its error and its log."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------------------------
# Stamps
# ---------------------------------------------------------------------------------------------------------------------
def stamp_path(paths: Layout, stage: str) -> Path:
    return paths.state / f"{stage}.json"


def read_stamp(paths: Layout, stage: str) -> dict | None:
    path = stamp_path(paths, stage)
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
        return stamp if isinstance(stamp, dict) and stamp.get("state") in ("running", "done") else None
    except (OSError, ValueError):
        return None  # an unreadable stamp proves nothing: the stage runs again


def write_stamp(paths: Layout, stage: str, stamp: dict) -> None:
    paths.state.mkdir(parents=True, exist_ok=True)
    write_atomic(stamp_path(paths, stage), json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def output_files(roots: Iterable[Path], base: Path) -> dict[str, str]:
    """``{path relative to base: sha256}`` of every file under ``roots``; hidden names (temporary files) skipped."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in files:
            rel = path.relative_to(root.parent if path == root else root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            found[_rel(path, base)] = sha256_file(path)
    return found


def digest_of(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def damaged_files(stamp: dict, base: Path) -> list[str]:
    """Recorded output files that are gone or no longer have their checksum."""
    bad = []
    for rel, digest in stamp.get("files", {}).items():
        path = base / rel
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return bad


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)  # outside the output folder (a configured data.out, say): recorded absolute


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------
class Pipeline:
    def __init__(self, cfg: PMGConfig, config_path: str, overrides: list[str], *, nproc: int = 1,
                 echo: Callable[[str], None] = print):
        self.cfg, self.config_path, self.overrides = cfg, config_path, list(overrides)
        self.paths = Layout.of(cfg)
        self.nproc = nproc
        self.echo = echo
        self.digests: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def run(self, only: Iterable[str] | None = None, force: Iterable[str] = ()) -> None:
        only = set(only or BY_NAME)
        force = set(force)
        with self._lock():
            for number, stage in enumerate(STAGES, start=1):
                tag = f"[{number}/{len(STAGES)}] {stage.name}"
                key = stage_key(stage, self.cfg, self.digests)
                stamp = read_stamp(self.paths, stage.name)
                if stage.name not in only:
                    if not (stamp and stamp["state"] == "done" and stamp["key"] == key):
                        if any(later.name in only for later in STAGES[number:]):
                            raise PMGError(f"stage {stage.name} is not complete and up to date, and later stages "
                                           f"need it: include it in --stages")
                        return
                    self.digests[stage.name] = stamp["digest"]
                    continue
                if self._up_to_date(stage, stamp, key, force, tag):
                    self.digests[stage.name] = stamp["digest"]
                    self.timings[stage.name] = float(stamp.get("seconds", 0.0))
                    continue
                self._run_stage(stage, key, tag)

    # -- decisions ------------------------------------------------------------------------------------------------
    def _up_to_date(self, stage: Stage, stamp: dict | None, key: str, force: set[str], tag: str) -> bool:
        """True to skip; otherwise clear or repair what must not be reused, and return False."""
        if stamp is None:
            return False
        if stamp["key"] != key or stage.name in force:
            why = "forced" if stage.name in force else "settings or inputs changed since its outputs were made"
            self._check_locations(stage)
            moved = self._set_aside(stage, stamp, stamp["key"][:8])
            moved_note = f" (old outputs moved to {', '.join(moved)})" if moved else ""
            self.echo(f"{tag}: {why}; running it again{moved_note}")
            return False
        if stamp["state"] == "running":
            self.echo(f"{tag}: interrupted last time; continuing")
            return False
        if stamp.get("outputs") != self._outputs(stage):
            self.echo(f"{tag}: its output location changed; running it again")
            return False
        bad = damaged_files(stamp, self.paths.root)
        if not bad:
            self.echo(f"{tag}: up to date (skipped)")
            return True
        self.echo(f"{tag}: {len(bad)} output file(s) changed or missing since the stage finished (checksum), e.g. "
                  f"{bad[0]}; rebuilding")
        self._check_locations(stage)
        self._repair(stage, bad, stamp)
        return False

    def _outputs(self, stage: Stage) -> list[str]:
        return [_rel(path, self.paths.root) for path in stage.outputs(self.paths)]

    def _check_locations(self, stage: Stage) -> None:
        """Refuse, before anything is moved or started, when a folder or file the stage will write is not the
        project's (see :mod:`research.pmg.ownership`)."""
        for folder in stage.folders(self.paths):
            ownership.check(folder, stage.name)
        if stage.name == "report":
            from research.pmg.pipeline.report import USERS_FIGURE

            for path in (self.paths.report, self.paths.root / USERS_FIGURE):
                ownership.check_file(path, stamp_path(self.paths, stage.name))

    def _set_aside(self, stage: Stage, stamp: dict, label: str) -> list[str]:
        """Move the resumable outputs the stamp recorded (where the stage wrote them, whatever the config says now)
        to ``<folder>.stale-<label>``; a recorded folder without the stage's marker is left where it is."""
        moved = []
        for rel in stamp.get("owned", []):
            folder = self.paths.root / rel
            if not folder.exists():
                continue
            if ownership.owner(folder) != stage.name:
                self.echo(f"  left {folder} in place: it does not carry this project's {ownership.MARKER} marker")
                continue
            target = folder.with_name(f"{folder.name}.stale-{label}")
            number = 1
            while os.path.lexists(target):  # never replace what is there, even an older stale copy
                number += 1
                target = folder.with_name(f"{folder.name}.stale-{label}-{number}")
            with ownership.hold(folder / ownership.LOCK, folder):  # not while a stage command works in it
                os.replace(folder, target)
            (target / ownership.LOCK).unlink(missing_ok=True)  # the lock file went along
            moved.append(str(target))
        return moved

    def _repair(self, stage: Stage, bad: list[str], stamp: dict) -> None:
        if stage.name == "train":  # resume from the newest intact checkpoint instead of training from zero
            checkpoints = self.paths.checkpoints
            damaged = [self.paths.root / rel for rel in bad]
            if all(p.is_relative_to(checkpoints) and p.relative_to(checkpoints).parts[0].startswith("step-")
                   for p in damaged):
                for name in sorted({p.relative_to(checkpoints).parts[0] for p in damaged}):
                    target = checkpoints / f".corrupt-{name}"
                    shutil.rmtree(target, ignore_errors=True)
                    if (checkpoints / name).exists():
                        os.replace(checkpoints / name, target)
                    self.echo(f"  set aside the damaged checkpoint {name} (as {target.name}); training resumes "
                              "from the newest intact one")
                return
        self._set_aside(stage, stamp, f"corrupt-{stamp['key'][:8]}")

    # -- running --------------------------------------------------------------------------------------------------
    def _run_stage(self, stage: Stage, key: str, tag: str) -> None:
        self._check_locations(stage)
        owned = [_rel(folder, self.paths.root) for folder in stage.owned(self.paths)]
        write_stamp(self.paths, stage.name, {"stage": stage.name, "state": "running", "key": key, "owned": owned,
                                             "started": _now()})
        start = time.time()
        if stage.name == "report":
            from research.pmg.pipeline.report import write_report

            self.timings[stage.name] = 0.0
            write_report(self.cfg, self.paths, self.timings, self.config_path)
        else:
            self._launch(stage, tag)
        seconds = time.time() - start
        files = output_files(stage.outputs(self.paths), self.paths.root)
        if not files:
            raise StageFailed(f"stage {stage.name} exited successfully but wrote no output under "
                              f"{', '.join(map(str, stage.outputs(self.paths)))}", 1)
        digest = digest_of(files)
        write_stamp(self.paths, stage.name, {"stage": stage.name, "state": "done", "key": key, "digest": digest,
                                             "files": files, "outputs": self._outputs(stage), "owned": owned,
                                             "seconds": round(seconds, 2), "finished": _now()})
        self.digests[stage.name] = digest
        self.timings[stage.name] = seconds
        self.echo(f"{tag}: done in {seconds:.1f} s")

    def command(self, stage: Stage) -> tuple[list[str], Path | None]:
        """The stage's command line, and msrun's log folder when it runs distributed."""
        args = ["--config", self.config_path]
        for item in [*self.overrides, *pinned(self.cfg, self.paths)]:
            args += ["--set", item]
        args += ["--no-progress", *stage.extra_args(self.paths)]
        if self.nproc > 1 and stage.distributed:
            log_dir = self.paths.stage_logs / f"msrun_{stage.name}"
            msrun = shutil.which("msrun", path=_env()["PATH"])
            if msrun is None:
                raise PMGError("--nproc needs msrun (installed with MindSpore) on PATH")
            port = os.environ.get("MASTER_PORT") or str(_free_port())
            return [msrun, f"--worker_num={self.nproc}", f"--local_worker_num={self.nproc}", f"--master_port={port}",
                    f"--log_dir={log_dir}", "--join=True", str(stage.script), *args], log_dir
        return [sys.executable, "-m", stage.module, *args], None

    def _launch(self, stage: Stage, tag: str) -> None:
        command, msrun_logs = self.command(stage)
        log = self.paths.stage_logs / f"{stage.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if msrun_logs is not None:
            shutil.rmtree(msrun_logs, ignore_errors=True)  # worker logs of this attempt only
        self.echo(f"{tag}: running (log: {log})")
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"\n===== {_now()} pipeline: {' '.join(command)}\n")
            handle.flush()
            proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_env(), preexec_fn=_die_with_parent)
            try:
                code = proc.wait()
            except BaseException:  # Ctrl-C or a signal in the pipeline: the stage must not run on unseen
                proc.kill()
                proc.wait()
                raise
        if code != 0:
            raise StageFailed(_failure(stage.name, code, log, msrun_logs), USER_ERROR if code == USER_ERROR else 1)

    @contextlib.contextmanager
    def _lock(self):
        """The state folder (stamps) and the pipeline's log folder, claimed; the state folder's lock held. The log
        folder that holds the pipeline's is the runtime's, as the stages' runtime adopts it."""
        ownership.adopt(self.paths.logs, "log")
        with ownership.claim(self.paths.state, "pipeline"), \
                ownership.claim(self.paths.stage_logs, "pipeline", lock=False):
            yield


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------
_WORKER_EXIT = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")


def _failure(stage: str, code: int, log: Path, msrun_logs: Path | None) -> str:
    """One line: the stage, how it ended, its own error line if it printed one, and the log to read."""
    text = log.read_text(encoding="utf-8", errors="replace")
    where = f"log: {log}"
    errors = _error_lines(text)
    if msrun_logs is not None:
        workers = sorted(msrun_logs.glob("worker_*.log"))
        dead = _WORKER_EXIT.search(text)
        culprit = None
        if dead:
            pid = dead.group(1)
            culprit = next((w for w in workers if re.search(rf"\({pid}[,:]", w.read_text(errors="replace"))), None)
        for worker in workers:
            worker_errors = _error_lines(worker.read_text(errors="replace"))
            if worker_errors:
                culprit, errors = culprit or worker, worker_errors
                break
        if culprit is not None:
            how = f"exit code {dead.group(2)}" if dead and dead.group(1) in culprit.read_text(errors="replace") else \
                "an error"
            signal_name = _signal_name(int(dead.group(2))) if dead else ""
            where = f"worker {culprit.stem.split('_')[-1]} ended with {how}{signal_name}; worker log: {culprit}"
        elif workers:
            where = f"worker logs: {', '.join(str(w) for w in workers)}"
    detail = errors[-1] if errors else (f"killed by {_signal_name(code).strip(' ()')}" if code < 0 else "")
    return f"stage {stage} failed (exit {code})" + (f": {detail}" if detail else "") + f"; {where}"


def _error_lines(text: str) -> list[str]:
    return [line.strip()[len("error:"):].strip() for line in text.splitlines() if line.startswith("error:")]


def _signal_name(code: int) -> str:
    if code >= 0:
        return ""
    try:
        return f" ({signal.Signals(-code).name})"
    except ValueError:
        return ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # msrun starts the first python
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _die_with_parent() -> None:
    """In the child: die when the pipeline dies (Linux), so a killed pipeline leaves no stage running unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
