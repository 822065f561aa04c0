"""What the frozen SD's diffusion loss can teach the soft preference: held-out loss under different contexts.

    python benchmarks/soft_signal.py [--config configs/mini/pmg.yaml] [--set k=v ...] [--train-dir DIR]
                                     [--draws 16] [--splits valid,test] [--json FILE]

The soft preference (the bias-correction LLM) learns only through the diffusion MSE of the frozen SD. This asks,
on the held-out samples of a finished run (its prepared data, keywords and cached training arrays), how much that
loss falls when the UNet is given more about the target than the target keywords T:

- ``T+P``: the preference keywords (what PMG adds as text);
- ``T+S``, ``T+P+S``: the trained soft embedding (``--train-dir``, weighted by ``train.soft_weight``), and the
  same with every sample given the soft embedding of *another user's* sample (``shuffled``): the gap between
  the two is what the soft embedding knows about its own user, the rest is a user-independent shift;
- ``T+theme``: the target item's category (a sticker's theme word: cats, food, ...), an oracle for what a user's
  taste can say;
- ``T+caption``: the target item's title (a sticker's own caption), an oracle upper bound (the mini SD was trained
  on captions);
- ``empty``: the empty prompt instead of T.

Every context is scored on the same noise, timesteps and latent draws (``--draws`` per sample), so each row's
difference to T is paired: mean and 95 % interval over samples (normal approximation of the per-sample mean
differences), also per quarter of the timestep range. Titles and categories come from the run's prepared data.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.pmg.cli import ArgumentParser, add_config_args, config_from_args, run  # noqa: E402
from research.pmg.errors import PMGError  # noqa: E402
from research.pmg.files import write_atomic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUARTERS = ((0, 250), (250, 500), (500, 750), (750, 1000))


def main(argv: list[str] | None = None) -> None:
    """Bad input (config, flags, too few samples) ends as one ``error:`` line with exit code 2 (:func:`run`)."""
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(p, default_config=str(REPO / "configs" / "mini" / "pmg.yaml"))
    p.add_argument("--train-dir", help="training output (or checkpoint) with the soft preference "
                                       "(default: the config's <output_dir>/train)")
    p.add_argument("--draws", type=positive, default=16, metavar="N", help="noise/timestep draws per sample")
    p.add_argument("--splits", default="valid,test")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    os.chdir(REPO)  # the mini configs' paths are relative to the repository
    result = measure(args)
    print(table(result))
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=1))


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def measure(args) -> dict:
    from research.pmg.layout import Layout
    from research.pmg.runtime import setup_runtime

    cfg = config_from_args(args)
    layout = Layout.of(cfg)
    runtime = setup_runtime(cfg.runtime)

    import mindspore as ms
    from mindspore import nn

    from research.pmg.models import build_diffusion_parts, resolve_tokenizers
    from research.pmg.models.conditioning import encode_texts
    from research.pmg.models.soft_preference import fit_to_bucket, load_soft_checkpoint, resolve_soft_checkpoint
    from research.pmg.records.keywords import load_keywords
    from research.pmg.records.samples import load_prepared
    from research.pmg.train import dataset as ds
    from research.pmg.train.build import build_trainer

    prepared = load_prepared(layout.data)
    trainer = build_trainer(cfg, runtime, prepared, load_keywords(layout.train_keywords))
    checkpoint = resolve_soft_checkpoint(args.train_dir or layout.train)
    load_soft_checkpoint(trainer.encoder, checkpoint)
    trainer.encoder.set_train(False)
    arrays, batch = trainer.arrays, cfg.train.batch_size

    rows = np.concatenate([arrays.indices(s) for s in args.splits.split(",")])
    rows = rows[:len(rows) // batch * batch]  # whole batches: one compiled shape per context length
    if len(rows) < 2 * batch:
        raise PMGError(f"--splits {args.splits}: only {len(rows)} samples in whole batches of {batch}, too few "
                       "to compare")
    samples = {s.id: s for s in prepared.samples}
    chosen = [samples[arrays.sample_ids[r]] for r in rows]
    items = prepared.items

    sd = build_diffusion_parts(cfg, runtime, resolve_tokenizers(cfg, runtime))  # for its text encoder

    def encode(texts: list[str]) -> np.ndarray:
        return encode_texts(sd.text_encoder, sd.tokenizer, texts, cfg.models.diffusion.tokenizer_max_length)

    target = np.asarray(arrays.target_ctx)[rows]
    preference = np.asarray(arrays.pref_ctx)[rows]
    prompt_ids = np.asarray(arrays.prompt_ids)[rows]
    soft = np.concatenate([
        trainer.encoder(ms.Tensor(fit_to_bucket(prompt_ids[s:s + batch], trainer.prompt_widths,
                                                cfg.models.llm.pad_token_id))).asnumpy()
        for s in range(0, len(rows), batch)]) * cfg.train.soft_weight
    shuffled = soft[other_user(np.array([s.user_id for s in chosen]))]
    contexts = {
        "T": target,
        "T+P": np.concatenate([target, preference], 1),
        "T+S": np.concatenate([target, soft], 1),
        "T+S shuffled": np.concatenate([target, shuffled], 1),
        "T+P+S": np.concatenate([target, preference, soft], 1),
        "T+P+S shuffled": np.concatenate([target, preference, shuffled], 1),
        "T+theme": np.concatenate([target, encode([items[s.target].category for s in chosen])], 1),
        "T+caption": np.concatenate([target, encode([items[s.target].title for s in chosen])], 1),
        "empty": encode([""] * len(rows)),
    }

    class PerSample(nn.Cell):  # the training loss's squared errors, one graph per context length
        def __init__(self, loss_net):
            super().__init__()
            self.loss_net = loss_net

        def construct(self, latents, context, noise, t):
            return self.loss_net.squared_errors(latents, context, noise, t).mean(axis=(1, 2, 3))

    per_sample = PerSample(trainer.loss_net)
    errors = {name: np.zeros((args.draws, len(rows))) for name in contexts}
    timesteps = np.zeros((args.draws, len(rows)), np.int64)
    moments = np.asarray(arrays.latent_moments)[rows]
    shape = (len(rows), moments.shape[1] // 2) + moments.shape[2:]
    start = time.perf_counter()
    for draw in range(args.draws):
        # stream 9: draws of their own, not those of training (0) or the held-out loss (1)
        noise, t, eps = ds.step_noise(shape, trainer.scheduler_steps, draw, 0, cfg.runtime.seed, stream=9)
        latents = ds.sample_latents(moments, eps, trainer.vae_scaling)
        timesteps[draw] = t
        for name, context in contexts.items():
            for s in range(0, len(rows), batch):
                part = slice(s, s + batch)
                err = per_sample(ms.Tensor(latents[part]), ms.Tensor(context[part], ms.float32),
                                 ms.Tensor(noise[part]), ms.Tensor(t[part]))
                errors[name][draw, part] = err.asnumpy()
    return summarise(errors, timesteps, {
        "config": args.config, "overrides": args.overrides, "checkpoint": str(checkpoint), "splits": args.splits,
        "samples": len(rows), "draws": args.draws, "seconds": round(time.perf_counter() - start, 1),
        "soft_norm_per_token": float(np.linalg.norm(soft, axis=-1).mean()),
        "target_norm_per_token": float(np.linalg.norm(target, axis=-1).mean()),
        "target_theme_is_history_majority": float(np.mean([majority_theme(s.history, items) ==
                                                           items[s.target].category for s in chosen]))})


def other_user(users: np.ndarray) -> np.ndarray:
    """For each row, the index of a row of a different user (the next such row in a fixed random order)."""
    order = np.random.default_rng(0).permutation(len(users))
    out = np.empty(len(users), np.int64)
    for pos, row in enumerate(order):
        for step in range(1, len(users)):
            cand = order[(pos + step) % len(users)]
            if users[cand] != users[row]:
                out[row] = cand
                break
        else:
            raise PMGError("every sample belongs to one user: no other user's soft embedding to compare with")
    return out


def majority_theme(history: list[str], items: dict) -> str:
    """The most frequent category of the history's items (ties: the first by name)."""
    themes = [items[h].category for h in history]
    return max(sorted(set(themes)), key=themes.count)


def paired(diff: np.ndarray) -> dict:
    """Mean of per-sample differences and a 95 % normal interval."""
    half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return {"mean": float(diff.mean()), "low": float(diff.mean() - half), "high": float(diff.mean() + half)}


def summarise(errors: dict, timesteps: np.ndarray, meta: dict) -> dict:
    base = errors["T"]
    rows = {}
    for name, err in errors.items():
        row = {"loss": float(err.mean()), "vs_T": paired((err - base).mean(axis=0))}
        for lo, hi in QUARTERS:
            mask = (timesteps >= lo) & (timesteps < hi)
            # per sample: mean over its draws in this range (samples with none are left out)
            count = mask.sum(axis=0)
            keep = count > 0
            diff = ((err - base) * mask).sum(axis=0)[keep] / count[keep]
            row[f"t{lo}-{hi}"] = paired(diff)
        rows[name] = row
    for name in ("T+S", "T+P+S"):  # what the soft embedding knows about its own user
        rows[name]["vs_shuffled"] = paired((errors[name] - errors[name + " shuffled"]).mean(axis=0))
    return {**meta, "contexts": rows}


def table(result: dict) -> str:
    fmt = lambda d: f"{d['mean']:+.5f} [{d['low']:+.5f}, {d['high']:+.5f}]"  # noqa: E731
    lines = [f"{result['samples']} samples ({result['splits']}) x {result['draws']} draws, {result['seconds']} s; "
             f"soft preference {result['checkpoint']}",
             f"target theme = the history's majority theme for {result['target_theme_is_history_majority']:.2f} "
             f"of samples; |soft token| {result['soft_norm_per_token']:.2f}, "
             f"|target-keyword token| {result['target_norm_per_token']:.2f}", "",
             "| context | loss | - T, 95 % | " + " | ".join(f"t {lo}-{hi}" for lo, hi in QUARTERS) + " |",
             "|---|---|---|" + "---|" * len(QUARTERS)]
    for name, row in result["contexts"].items():
        lines.append(f"| {name} | {row['loss']:.5f} | {fmt(row['vs_T'])} | "
                     + " | ".join(f"{row[f't{lo}-{hi}']['mean']:+.5f}" for lo, hi in QUARTERS) + " |")
    for name in ("T+S", "T+P+S"):
        lines.append(f"\n{name} - {name} shuffled (own user's soft embedding vs another user's): "
                     f"{fmt(result['contexts'][name]['vs_shuffled'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run(main))
