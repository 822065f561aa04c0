"""The step loop every trainer runs: the PMG training stage (train/loop.py) and the mini CLIP, SD and LLM trainers.

A run trains a jitted step cell (research/pmg/train/step.py ``build_train_step``) for steps ``[start, max_steps)``.
Batches and noise are functions of the step number, so a run resumed from its newest checkpoint
(:func:`load_newest`) continues exactly where that checkpoint left off. After every step the loop checks the loss
(NaN/Inf raises :class:`~research.pmg.errors.NonFiniteLoss` naming the step and the last good checkpoint), writes
a checkpoint every ``every`` steps and after the last one (research/pmg/checkpoints.py: atomic, newest ``keep_last``
kept), and appends the step's record to a JSONL log. What a batch is, what a log record and a checkpoint hold,
the held-out loss and which data-parallel worker writes are the caller's, passed in as functions and flags.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from research.pmg.checkpoints import newest_checkpoint, write_checkpoint_dir
from research.pmg.errors import NonFiniteLoss


@dataclass
class Resumed:
    """The checkpoint a run continues from."""

    path: Path
    meta: dict  # its meta.json
    step: int  # the steps it holds: the resumed run starts with step ``step + 1``


def load_newest(folder: Path, load: Callable[[Path], dict]) -> Resumed | None:
    """Load the newest complete checkpoint in ``folder`` with ``load(path) -> meta``; None when there is none."""
    newest = newest_checkpoint(folder)
    if newest is None:
        return None
    meta = load(newest)
    return Resumed(path=newest, meta=meta, step=int(meta["step"]))


@dataclass
class Step:
    """A step just run, as the caller sees it to make the step's log record and checkpoint meta."""

    done: int  # steps done, those of the resumed runs included: this was step number ``done``
    loss: float  # this step's loss (its last micro-batch's)
    window: list[float]  # the losses of the steps since the last log record, this one's included
    last: bool  # the last step of this process (``max_steps`` or ``stop_after`` reached)
    clock: tuple[float, float]  # (wall, CPU) clock when the loop started

    @property
    def seconds(self) -> float:
        """Wall seconds since the loop started (compilation included), read when asked."""
        return time.time() - self.clock[0]

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of this process (all threads) since the loop started, read when asked."""
        return time.process_time() - self.clock[1]


@dataclass
class Checkpoints:
    """Where and how often the loop writes checkpoints, and what they hold (read at save time)."""

    folder: Path
    every: int  # steps between checkpoints; 0: only after the last step
    keep_last: int
    files: Callable[[], dict[str, list[dict]]]  # .ckpt file name -> MindSpore save list (write_checkpoint_dir)
    meta: Callable[[Step], dict]  # what meta.json holds besides "step" and "loss"
    write: bool = True  # False on all data-parallel workers but one: a folder has one writer


@dataclass
class LoopResult:
    start: int  # the step this process started from (0, or the resumed checkpoint's)
    steps_done: int
    losses: list[float] = field(default_factory=list)  # every micro-batch's loss run by this process
    records: list[dict] = field(default_factory=list)  # the log: records kept from the runs resumed, then this one's
    last_checkpoint: Path | None = None
    seconds: float = 0.0  # wall time of this process's steps, compilation included
    cpu_seconds: float = 0.0  # CPU time of this process over the same span (all threads): contention-free cost

    @property
    def eval_losses(self) -> dict[int, float]:
        """The held-out losses (records' ``eval_loss``) of the steps this process ran, by step."""
        return {r["step"]: r["eval_loss"] for r in self.records if r["step"] > self.start and "eval_loss" in r}


def run_steps(step_cell, batches: Callable[[int], Iterable[Sequence]], *, start: int, max_steps: int,
              stop_after: int | None, record: Callable[[Step], dict | None], checkpoints: Checkpoints,
              log_path: Path | None, name: str = "", progress: bool = False, samples_per_step: int = 0) -> LoopResult:
    """Run ``step_cell(*inputs)`` for each micro-batch ``inputs`` of ``batches(step)``, steps ``[start, end)``.

    ``end`` is ``max_steps``, or ``stop_after`` when that is smaller (an interrupted run, in tests). ``step_cell``
    returns ``(scaled_loss, loss)`` as build_train_step's does; optimizer updates happen inside it. After each step
    ``record(step)`` returns the step's log record (None: no record this step), a checkpoint is written when due,
    then the record is appended to ``log_path`` (None: no log, as on all data-parallel workers but one). The log
    first loses the records of the steps this run redoes. A NaN/Inf loss raises :class:`NonFiniteLoss`, its message
    starting with ``name`` (which model) when given. ``progress`` shows a tqdm bar with the loss and
    ``samples_per_step`` samples per step per second.
    """
    end = min(max_steps, stop_after or max_steps)
    result = LoopResult(start=start, steps_done=start, last_checkpoint=newest_checkpoint(checkpoints.folder))
    if log_path is not None:
        result.records = _restart_log(log_path, keep_until=start)
    log = log_path.open("a") if log_path is not None else None
    bar = _progress_bar(start, max_steps) if progress else None
    clock = (time.time(), time.process_time())
    window: list[float] = []
    try:
        for step in range(start, end):
            for inputs in batches(step):
                # [1]: the loss averaged over the workers, not divided by grad_accum_steps (see build_train_step)
                loss = float(step_cell(*inputs)[1].asnumpy())
                if not math.isfinite(loss):
                    raise NonFiniteLoss(f"{name + ': ' if name else ''}loss is {loss} at step {step + 1}; stopped. "
                                        f"Last good checkpoint: {result.last_checkpoint or 'none'}")
                result.losses.append(loss)
            done = result.steps_done = step + 1
            window.append(loss)
            info = Step(done=done, loss=loss, window=window, last=done == end, clock=clock)
            line = record(info)
            if checkpoints.write and ((checkpoints.every and done % checkpoints.every == 0) or done == end):
                meta = {"step": done, "loss": loss, **checkpoints.meta(info)}
                result.last_checkpoint = write_checkpoint_dir(checkpoints.folder, checkpoints.files(), meta,
                                                              checkpoints.keep_last)
            if line is not None:
                result.records.append(line)
                window = []
                if log is not None:
                    log.write(json.dumps(line) + "\n")
                    log.flush()
            if bar is not None:
                seen = (done - start) * samples_per_step
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{seen / max(time.time() - clock[0], 1e-9):.1f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    result.seconds = time.time() - clock[0]
    result.cpu_seconds = time.process_time() - clock[1]
    return result


def _restart_log(path: Path, keep_until: int) -> list[dict]:
    """Rewrite the JSONL log without the records of steps after ``keep_until`` (a resumed run redoes those steps);
    return the records kept."""
    lines = path.read_text().splitlines() if path.is_file() else []
    lines = [line for line in lines if line.strip() and json.loads(line)["step"] <= keep_until]
    path.write_text("".join(line + "\n" for line in lines))
    return [json.loads(line) for line in lines]


def _progress_bar(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
