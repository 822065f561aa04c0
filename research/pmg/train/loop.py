"""The training loop: batches -> jitted step -> logs, held-out loss, checkpoints, resume."""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import mindspore as ms

from research.pmg import ownership
from research.pmg.config import PMGConfig, dump_config
from research.pmg.errors import PMGError
from research.pmg.runtime import Runtime
from research.pmg.train import dataset as ds
from research.pmg.checkpoints import list_checkpoints
from research.pmg.train.checkpoint import load_train_checkpoint, save_train_checkpoint


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    output_dir: Path
    steps_done: int
    losses: list[float] = field(default_factory=list)  # training loss of every step run in this process
    eval_losses: dict[int, float] = field(default_factory=dict)
    last_checkpoint: Path | None = None


@dataclass
class Trainer:
    """Holds the built models, cached arrays and the jitted step; :meth:`run` trains."""

    cfg: PMGConfig
    runtime: Runtime
    arrays: ds.TrainingArrays
    encoder: object
    loss_net: object
    step_cell: object
    scheduler_steps: int
    vae_scaling: float
    learning_rates: np.ndarray
    rank: int = 0
    world: int = 1
    eval_net: object = None  # loss_net averaged over the workers (step.WorkerMeanLoss); None: loss_net

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("model.encoder.llama.", "model.unet.")

    def _inputs(self, rows: np.ndarray, step: int, micro: int, stream: int, pool: np.ndarray | None = None):
        """Model inputs for this rank's slice of the global micro-batch ``rows``.

        With ``train.negative_weight`` > 0 a seventh input holds negative latents: per row, the target of
        another row of ``pool`` (the split the rows come from), drawn as a function of the step.
        """
        a = self.arrays
        seed = self.cfg.runtime.seed
        moments = np.asarray(a.latent_moments)[rows]
        shape = (len(rows), moments.shape[1] // 2) + moments.shape[2:]
        noise, timesteps, eps = ds.step_noise(shape, self.scheduler_steps, step, micro, seed, stream)
        latents = ds.sample_latents(moments, eps, self.vae_scaling)
        per_rank = len(rows) // self.world
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        take = lambda arr: ms.Tensor(np.ascontiguousarray(np.asarray(arr)[mine]))  # noqa: E731
        inputs = (take(np.asarray(a.prompt_ids)[rows]), take(latents), take(np.asarray(a.target_ctx)[rows]),
                  take(np.asarray(a.pref_ctx)[rows]), take(noise), take(timesteps))
        if self.cfg.train.negative_weight > 0:
            negatives, neg_eps = ds.negative_rows(rows, self.arrays.indices("train") if pool is None else pool,
                                                  shape, step, micro, seed, stream)
            neg = ds.sample_latents(np.asarray(a.latent_moments)[negatives], neg_eps, self.vae_scaling)
            inputs += (take(neg),)
        return inputs

    def eval_loss(self) -> float | None:
        """Mean loss over fixed held-out batches (same noise every time, so values are comparable)."""
        rows = self.arrays.indices("valid")
        if len(rows) == 0:
            return None
        global_batch = self.cfg.train.batch_size * self.world
        losses = []
        for k in range(self.cfg.train.eval_batches or 1):
            batch = rows[np.resize(np.arange(k * global_batch, (k + 1) * global_batch), global_batch) % len(rows)]
            inputs = self._inputs(batch, k, 0, stream=1, pool=rows)
            losses.append(float((self.eval_net or self.loss_net)(*inputs).asnumpy()))
        return float(np.mean(losses))

    def run(self, out: Path, resume: bool, progress: bool = True, stop_after: int | None = None) -> TrainResult:
        """Train to ``train.max_steps`` (or ``stop_after`` steps, to simulate an interrupted run in tests).

        ``out`` is claimed (research/pmg/ownership.py: checked, marked, locked by rank 0) and ``config.yaml`` written
        only once the checkpoint to resume from has loaded: a run that fails to load leaves no settings behind.
        """
        start = 0
        if resume:
            found = list_checkpoints(out / "checkpoints")
            if found:
                meta = load_train_checkpoint(found[-1], self.step_cell, self.frozen_prefixes)
                start = int(meta["step"])
        with ownership.claim(out, "train", lock=self.rank == 0):
            if self.rank == 0:
                save_run_config(self.cfg, out)
            return self._train(out, start, progress, stop_after)

    def _train(self, out: Path, start: int, progress: bool, stop_after: int | None) -> TrainResult:
        train = self.cfg.train
        ckpt_dir = out / "checkpoints"
        result = TrainResult(output_dir=out, steps_done=start, last_checkpoint=(list_checkpoints(ckpt_dir) or [None])[-1])
        if start >= train.max_steps:
            return result
        rows_train = self.arrays.indices("train")
        if len(rows_train) == 0:
            raise PMGError("the prepared dataset has no 'train' samples with keywords")
        global_batch = train.batch_size * self.world
        bar = _progress(start, train.max_steps, enabled=progress and self.rank == 0)
        log = _open_log(out / "train_log.jsonl", keep_until=start) if self.rank == 0 else None
        t0, seen = time.time(), 0
        for step in range(start, min(train.max_steps, stop_after or train.max_steps)):
            for micro in range(train.grad_accum_steps):
                rows = rows_train[ds.batch_indices(len(rows_train), step, micro, train.grad_accum_steps, global_batch,
                                                   self.cfg.runtime.seed)]
                # [1]: the loss averaged over the workers, not divided by grad_accum_steps (see build_train_step)
                loss = float(self.step_cell(*self._inputs(rows, step, micro, stream=0))[1].asnumpy())
                if not math.isfinite(loss):
                    raise NonFiniteLoss(f"loss is {loss} at step {step + 1}; stopped. Last good checkpoint: "
                                        f"{result.last_checkpoint or 'none'}")
                result.losses.append(loss)
                seen += len(rows)
            done = step + 1
            result.steps_done = done
            record = {"step": done, "loss": loss, "lr": float(self.learning_rates[step])}
            if (train.eval_every and done % train.eval_every == 0) or done == train.max_steps:
                ev = self.eval_loss()
                if ev is not None:
                    result.eval_losses[done] = record["eval_loss"] = ev
            if (train.save_every and done % train.save_every == 0) or done in (train.max_steps, stop_after):
                if self.rank == 0:
                    meta = {"step": done, "loss": loss, "config": self.cfg.source}
                    result.last_checkpoint = save_train_checkpoint(ckpt_dir, self.step_cell, self.encoder,
                                                                   self.frozen_prefixes, meta, train.keep_last)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{seen / max(time.time() - t0, 1e-9):.1f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        if self.world > 1:  # data-parallel replicas must agree; each worker's log shows its own checksum
            print(f"rank {self.rank}: trainable checksum {trainable_checksum(self.encoder)}", flush=True)
        return result


def trainable_checksum(encoder) -> str:
    """SHA-256 over the trainable parameters' names and bytes (equal on all data-parallel replicas)."""
    digest = hashlib.sha256()
    for name, param in encoder.parameters_and_names():
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.asnumpy().tobytes())
    return digest.hexdigest()[:16]


def _open_log(path: Path, keep_until: int):
    """The per-step JSONL log, without the lines of steps a resumed run is about to redo."""
    kept = []
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= keep_until]
    path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


def _progress(start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def save_run_config(cfg: PMGConfig, out: Path) -> None:
    dump_config(cfg, out / "config.yaml")
