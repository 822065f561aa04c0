"""Where every stage reads and writes: one rule for every path, used by each stage's command and by the pipeline.

A path is its config field when that is set (relative to the working directory), else its place under
``runtime.output_dir``::

    <output_dir>/
        data/                        the prepared dataset                       data.out
        keywords/keywords.jsonl      the keywords file (summary beside it)      keywords.out
        keywords/cache/              the keyword stage's answer cache           keywords.cache
        train/                       training (config.yaml, train_log.jsonl, checkpoints/step-*/)
        generate/                    generated images and their manifest        generate.out
        evaluate/                    the evaluation report                      evaluate.out
        report.md, pipeline/         the pipeline's report, and its stamps and lock
        log/                         MindSpore and MindFormers logs; the pipeline's stage logs in log/pipeline/
                                                                                runtime.log_dir
        cache/                       built tokenizers, cached latents           runtime.cache_dir

A stage's input is its own field when set (``keywords.data``, ``train.keywords``, ``generate.data``,
``generate.keywords``, ``evaluate.data``, ``evaluate.keywords``), else what the stage before it wrote, so a stage
run alone reads the same files as under the pipeline. ``generate.soft_checkpoint`` is the exception: empty means
"no soft preference" (the keywords-only baselines set it so), so the pipeline names the training folder itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from research.pmg.config import PMGConfig
from research.pmg.config.data import DataConfig
from research.pmg.config.runtime import RuntimeConfig


def _place(field: str, default: Path) -> Path:
    return Path(field).resolve() if field else default


def runtime_dirs(runtime: RuntimeConfig) -> tuple[Path, Path, Path]:
    """The output, log and cache folders: what :mod:`research.pmg.runtime` sets up, from the runtime section alone."""
    root = Path(runtime.output_dir).resolve()
    return root, _place(runtime.log_dir, root / "log"), _place(runtime.cache_dir, root / "cache")


def data_dir(data: DataConfig, output_dir: str | os.PathLike) -> Path:
    """The prepared dataset, from the data section alone (:func:`research.pmg.data.prepare.prepare` takes only that)."""
    return _place(data.out, Path(output_dir).resolve() / "data")


@dataclass(frozen=True)
class Layout:
    """Every path a stage or the pipeline reads or writes, absolute. Build it with :meth:`of`."""

    root: Path  # runtime.output_dir
    logs: Path
    cache: Path
    data: Path  # written by prepare
    keywords: Path  # the keywords file, written by keywords
    keywords_cache: Path
    train: Path  # written by train
    checkpoints: Path  # <train>/checkpoints: step-*/ folders
    generate: Path
    evaluate: Path
    report: Path
    state: Path  # the pipeline's stamps and lock
    stage_logs: Path  # the pipeline's log of each stage
    # what each stage reads
    keywords_data: Path
    train_keywords: Path
    generate_data: Path
    generate_keywords: Path
    evaluate_data: Path
    evaluate_keywords: Path

    @classmethod
    def of(cls, cfg: PMGConfig) -> Layout:
        root, logs, cache = runtime_dirs(cfg.runtime)
        data = data_dir(cfg.data, root)
        keywords = _place(cfg.keywords.out, root / "keywords" / "keywords.jsonl")
        train = root / "train"
        return cls(root=root, logs=logs, cache=cache, data=data, keywords=keywords,
                   keywords_cache=_place(cfg.keywords.cache, root / "keywords" / "cache"),
                   train=train, checkpoints=train / "checkpoints",
                   generate=_place(cfg.generate.out, root / "generate"),
                   evaluate=_place(cfg.evaluate.out, root / "evaluate"),
                   report=root / "report.md", state=root / "pipeline", stage_logs=logs / "pipeline",
                   keywords_data=_place(cfg.keywords.data, data),
                   train_keywords=_place(cfg.train.keywords, keywords),
                   generate_data=_place(cfg.generate.data, data),
                   generate_keywords=_place(cfg.generate.keywords, keywords),
                   evaluate_data=_place(cfg.evaluate.data, data),
                   evaluate_keywords=_place(cfg.evaluate.keywords, keywords))
