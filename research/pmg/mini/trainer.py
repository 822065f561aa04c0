"""The loop shared by the mini trainers: jitted step, seeded batches, JSONL log, atomic checkpoints, exact resume.

A run's folder holds ``train_log.jsonl`` and ``checkpoints/step-NNNNNN/`` in the layout of the PMG training stage
(``train_state.ckpt``: every parameter of the train-step cell - weights, Adam moments, step counter - except the
learning-rate table, which comes from the config; ``meta.json``), written to a hidden folder and renamed, so a
crash leaves the previous checkpoint or the new one. Batches and noise are functions of the step number, so
``--resume`` continues exactly where the newest checkpoint left off.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import mindspore as ms
from mindspore import nn

from research.pmg.errors import PMGError
from research.pmg.mini.config import OptimConfig
from research.pmg.train.checkpoint import LR_PARAM, load_train_checkpoint
from research.pmg.checkpoints import STATE_FILE, list_checkpoints, write_checkpoint_dir


class NonFiniteLoss(PMGError, RuntimeError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


@dataclass
class RunResult:
    steps_done: int
    losses: list[float] = field(default_factory=list)  # every step run by this process
    first_loss: float | None = None  # mean over the first log window of the whole run (from the log)
    last_loss: float | None = None  # mean over the last log window
    seconds: float = 0.0  # wall time of this process's steps, compile included
    cpu_seconds: float = 0.0  # CPU time of this process over the same span (all threads): contention-free cost
    total_seconds: float = 0.0  # summed over the resumed runs (from the log)
    total_cpu_seconds: float = 0.0  # CPU time summed over the resumed runs (from the log; 0 for records without it)


def build_step(loss_net: nn.Cell, optim: OptimConfig):
    """The project's jitted train step (MindONE TrainStep, AdamW, warm-up + cosine LR, clipping) for ``loss_net``."""
    from research.pmg.train.step import build_train_step

    step_cell, _ = build_train_step(loss_net, optim.as_train_config())
    return step_cell


def save_checkpoint(folder: Path, step_cell: nn.Cell, meta: dict, keep_last: int) -> Path:
    """Write ``folder/step-<step>/`` atomically; keep the newest ``keep_last``."""
    state = [{"name": n, "data": p} for n, p in step_cell.parameters_and_names() if not _is_lr(n)]
    return write_checkpoint_dir(folder, {STATE_FILE: state}, meta, keep_last)


def train(name: str, step_cell: nn.Cell, batch: Callable[[int], Sequence[ms.Tensor]], optim: OptimConfig, out: Path,
          *, resume: bool, stop_after: int | None = None, progress: bool = True) -> RunResult:
    """Run ``step_cell(*batch(step))`` for steps ``[start, optim.max_steps)``; ``start`` is 0 or the resumed step.

    ``stop_after`` ends the run early (with a checkpoint) to simulate an interruption in tests.
    """
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    start = 0
    if resume and list_checkpoints(ckpt_dir):
        meta = load_train_checkpoint(list_checkpoints(ckpt_dir)[-1], step_cell, ())
        start = int(meta["step"])
    log_path = out / "train_log.jsonl"
    records = _kept_records(log_path, start)
    result = RunResult(steps_done=start)
    end = min(optim.max_steps, stop_after or optim.max_steps)
    t0, c0 = time.time(), time.process_time()
    with log_path.open("w") as log:
        for record in records:
            log.write(json.dumps(record) + "\n")
        window: list[float] = []
        last_ckpt = (list_checkpoints(ckpt_dir) or [None])[-1]
        for step in range(start, end):
            loss = float(step_cell(*batch(step))[0].asnumpy())
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"{name}: loss is {loss} at step {step + 1}; last good checkpoint: {last_ckpt}")
            result.losses.append(loss)
            window.append(loss)
            done = step + 1
            result.steps_done = done
            if done % optim.log_every == 0 or done == end:
                record = {"step": done, "loss": sum(window) / len(window), "seconds": round(time.time() - t0, 2),
                          "cpu_seconds": round(time.process_time() - c0, 2), "start": start}
                records.append(record)
                log.write(json.dumps(record) + "\n")
                log.flush()
                if progress:
                    print(f"[{name}] step {done}/{optim.max_steps} loss {record['loss']:.4f} "
                          f"({record['seconds']:.0f} s)", flush=True)
                window = []
            if done % optim.save_every == 0 or done == end:
                last_ckpt = save_checkpoint(ckpt_dir, step_cell, {"step": done, "loss": loss, "run": name},
                                            optim.keep_last)
    result.seconds = time.time() - t0
    result.cpu_seconds = time.process_time() - c0
    if records:
        result.first_loss, result.last_loss = records[0]["loss"], records[-1]["loss"]
    result.total_seconds = _summed(records, "seconds")
    result.total_cpu_seconds = _summed(records, "cpu_seconds")
    return result


def _summed(records: list[dict], key: str) -> float:
    """A per-process clock (``seconds``, ``cpu_seconds``) summed over the processes that wrote the log.

    Each process restarts the clock and tags its records with the step it started from (``start``): a process's
    share is its last record's value. (Records without the tag: a new process is assumed where the clock fell.)
    """
    total, previous, segment = 0.0, 0.0, None
    for record in records:
        value, tag = record.get(key, 0.0), record.get("start")
        new_process = (tag != segment) if tag is not None or segment is not None else value < previous
        total += value if new_process else value - previous
        previous, segment = value, tag
    return total


def _is_lr(name: str) -> bool:
    """The learning-rate table: ``optimizer.learning_rate`` (MindSpore names it ``...learning_rate.learning_rate``)."""
    return name == LR_PARAM or name.startswith(LR_PARAM + ".")


def _kept_records(path: Path, keep_until: int) -> list[dict]:
    """The log's records of steps up to ``keep_until`` (a resumed run redoes the later ones)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["step"] <= keep_until]
