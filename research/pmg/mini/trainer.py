"""What the mini CLIP and SD trainers add to the shared step loop (research/pmg/loop.py): their log and checkpoints.

A run's folder holds ``train_log.jsonl`` (a record per ``log_every`` steps: the window's mean loss, the process's
wall and CPU seconds so far, the step it started from) and ``checkpoints/step-NNNNNN/`` in the layout of the PMG
training stage (``train_state.ckpt``: every parameter of the train-step cell - weights, Adam moments, step counter -
except the learning-rate table, which comes from the config; ``meta.json``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import mindspore as ms
from mindspore import nn

from research.pmg.checkpoints import STATE_FILE, load_step_state, step_state
from research.pmg.loop import Checkpoints, LoopResult, Step, load_newest, run_steps
from research.pmg.mini.config import OptimConfig


def build_step(loss_net: nn.Cell, optim: OptimConfig):
    """The project's jitted train step (MindONE TrainStep, AdamW, warm-up + cosine LR, clipping) for ``loss_net``."""
    from research.pmg.train.step import build_train_step

    step_cell, _ = build_train_step(loss_net, optim.as_train_config())
    return step_cell


def train(name: str, step_cell: nn.Cell, batch: Callable[[int], Sequence[ms.Tensor]], optim: OptimConfig, out: Path,
          *, resume: bool, stop_after: int | None = None, progress: bool = True) -> LoopResult:
    """Run ``step_cell(*batch(step))`` for steps ``[start, optim.max_steps)``; ``start`` is 0 or the resumed step.

    ``stop_after`` ends the run early (with a checkpoint) to simulate an interruption in tests.
    """
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    load = lambda path: load_step_state(path, step_cell, f"training checkpoint {path.name}")  # noqa: E731
    resumed = load_newest(ckpt_dir, load) if resume else None
    start = resumed.step if resumed else 0

    def record(step: Step) -> dict | None:
        if step.done % optim.log_every and not step.last:
            return None
        line = {"step": step.done, "loss": sum(step.window) / len(step.window), "seconds": round(step.seconds, 2),
                "cpu_seconds": round(step.cpu_seconds, 2), "start": start}
        if progress:
            print(f"[{name}] step {step.done}/{optim.max_steps} loss {line['loss']:.4f} ({line['seconds']:.0f} s)",
                  flush=True)
        return line

    checkpoints = Checkpoints(ckpt_dir, optim.save_every, optim.keep_last,
                              files=lambda: {STATE_FILE: step_state(step_cell)}, meta=lambda step: {"run": name})
    return run_steps(step_cell, lambda step: [batch(step)], start=start, max_steps=optim.max_steps,
                     stop_after=stop_after, record=record, checkpoints=checkpoints, log_path=out / "train_log.jsonl",
                     name=name)


def run_metrics(run: LoopResult) -> dict:
    """A run's manifest figures, from its whole log (the processes it resumed included): the mean loss of the first
    and last log windows, the steps, and wall and CPU seconds summed over the processes."""
    first, last = (run.records[0]["loss"], run.records[-1]["loss"]) if run.records else (None, None)
    return {"loss_first": first, "loss_last": last, "steps": run.steps_done,
            "train_seconds": round(summed(run.records, "seconds"), 1),
            "train_cpu_seconds": round(summed(run.records, "cpu_seconds"), 1)}


def summed(records: list[dict], key: str) -> float:
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
