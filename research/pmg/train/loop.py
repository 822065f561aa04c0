"""The training stage on the shared step loop (research/pmg/loop.py): its batches, log records, held-out loss,
checkpoints, and the data-parallel workers' parts (rank 0 writes; ownership of the output folder)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import mindspore as ms

from research.pmg import ownership, testhooks
from research.pmg.checkpoints import newest_checkpoint
from research.pmg.config import PMGConfig, dump_config
from research.pmg.errors import PMGError
from research.pmg.loop import Checkpoints, LoopResult, Step, load_newest, run_steps
from research.pmg.models.soft_preference import fit_to_bucket, prompt_widths
from research.pmg.runtime import Runtime
from research.pmg.train import dataset as ds
from research.pmg.train.checkpoint import load_train_checkpoint, train_checkpoint_files


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
    def prompt_widths(self) -> tuple[int, ...]:
        return prompt_widths(self.cfg)

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
        # One width for the whole global micro-batch, so every worker runs the same graph.
        prompt_ids = fit_to_bucket(np.asarray(a.prompt_ids)[rows], self.prompt_widths,
                                   self.cfg.models.llm.pad_token_id)
        inputs = (take(prompt_ids), take(latents), take(np.asarray(a.target_ctx)[rows]),
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

    def run(self, out: Path, resume: bool, progress: bool = True, stop_after: int | None = None) -> LoopResult:
        """Train to ``train.max_steps`` (or ``stop_after`` steps, to simulate an interrupted run in tests).

        ``out`` is claimed (research/pmg/ownership.py: checked, marked, locked by rank 0) and ``config.yaml`` written
        only once the checkpoint to resume from has loaded: a run that fails to load leaves no settings behind.
        """
        load = lambda path: load_train_checkpoint(path, self.step_cell, self.frozen_prefixes)  # noqa: E731
        resumed = load_newest(out / "checkpoints", load) if resume else None
        start = resumed.step if resumed else 0
        with ownership.claim(out, "train", lock=self.rank == 0):
            if self.rank == 0:
                save_run_config(self.cfg, out)
            return self._train(out, start, progress, stop_after)

    def _train(self, out: Path, start: int, progress: bool, stop_after: int | None) -> LoopResult:
        train = self.cfg.train
        ckpt_dir = out / "checkpoints"
        if start >= train.max_steps:  # a finished run: its log stays as it is
            return LoopResult(start=start, steps_done=start, last_checkpoint=newest_checkpoint(ckpt_dir))
        rows_train = self.arrays.indices("train")
        if len(rows_train) == 0:
            raise PMGError("the prepared dataset has no 'train' samples with keywords")
        global_batch = train.batch_size * self.world

        def batches(step: int):
            for micro in range(train.grad_accum_steps):
                rows = rows_train[ds.batch_indices(len(rows_train), step, micro, train.grad_accum_steps, global_batch,
                                                   self.cfg.runtime.seed)]
                yield self._inputs(rows, step, micro, stream=0)

        def record(step: Step) -> dict:
            testhooks.hold("train", f"step-{step.done}")  # after the step, before its checkpoint and log line
            line = {"step": step.done, "loss": step.loss, "lr": float(self.learning_rates[step.done - 1])}
            if (train.eval_every and step.done % train.eval_every == 0) or step.done == train.max_steps:
                ev = self.eval_loss()  # on every worker: the held-out loss is averaged over them
                if ev is not None:
                    line["eval_loss"] = ev
            return line

        checkpoints = Checkpoints(ckpt_dir, train.save_every, train.keep_last,
                                  files=lambda: train_checkpoint_files(self.step_cell, self.encoder,
                                                                       self.frozen_prefixes),
                                  meta=lambda step: {"config": self.cfg.source}, write=self.rank == 0)
        result = run_steps(self.step_cell, batches, start=start, max_steps=train.max_steps, stop_after=stop_after,
                           record=record, checkpoints=checkpoints,
                           log_path=out / "train_log.jsonl" if self.rank == 0 else None,
                           progress=progress and self.rank == 0,
                           samples_per_step=global_batch * train.grad_accum_steps)
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


def save_run_config(cfg: PMGConfig, out: Path) -> None:
    dump_config(cfg, out / "config.yaml")
