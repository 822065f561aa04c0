"""The pipeline's stages: what each runs, which settings and inputs its outputs depend on, and what it writes.

A stage's *key* is a hash of the config values it reads (paths that only wire stages together left out), of the
names, sizes and times of the model files it reads, and of the digests of its input stages' outputs: changing
``generate.steps`` re-runs generation and evaluation but not training, weights converted again at the same path
re-run the stages that read them, and re-preparing data that comes out byte-identical re-runs nothing after it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from research.pmg.config import PMGConfig
from research.pmg.integrity import files_fingerprint
from research.pmg.layout import Layout
from research.pmg.records.keywords import summary_path
from research.pmg.scenarios import scenario

RUNTIME_KEYS = ("device", "mode", "precision", "seed")  # what changes numbers; not paths, threads or device id
STAGE_NAMES = ("prepare", "keywords", "train", "generate", "evaluate", "report")


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # ``python -m <module>``; "" for the report, written by the pipeline itself
    inputs: tuple[str, ...]
    settings: Callable[[PMGConfig], dict[str, Any]]  # the config values its outputs depend on
    outputs: Callable[[Layout], list[Path]]  # files or folders whose files are checksummed in the stamp
    owned: Callable[[Layout], list[Path]] = lambda paths: []  # resumable outputs, set aside when out of date
    # the folders it writes into, checked against the ownership rule (research/pmg/ownership.py) before it runs
    folders: Callable[[Layout], list[Path]] = lambda paths: []
    distributed: bool = False  # runs under msrun with --nproc > 1
    extra_args: Callable[[Layout], list[str]] = lambda paths: []

    @property
    def script(self) -> Path:
        """The file msrun starts (it runs files, not modules)."""
        return Path(__file__).resolve().parents[3] / Path(*self.module.split(".")) / "__main__.py"


def _section(cfg: PMGConfig, name: str, *drop: str) -> dict[str, Any]:
    values = dataclasses.asdict(getattr(cfg, name))
    for key in drop:
        values.pop(key, None)
    return values


def _long_prompts(cfg: PMGConfig) -> dict[str, Any]:
    """How keyword texts longer than the text encoder's window are encoded: training and generation both read it.
    Absent with the default (``cut``), so the stamps of runs made before the setting existed stay valid."""
    return {"text_chunks": cfg.generate.text_chunks} if cfg.generate.text_chunks else {}


def _generate(cfg: PMGConfig) -> dict[str, Any]:
    values = _section(cfg, "generate", "data", "keywords", "out")
    if not cfg.generate.text_chunks:
        values.pop("long_prompts")
        values.pop("max_chunks")
    return values


def _runtime(cfg: PMGConfig) -> dict[str, Any]:
    return {key: getattr(cfg.runtime, key) for key in RUNTIME_KEYS}


def raw_fingerprint(cfg: PMGConfig) -> list:
    """The raw input files' fingerprint."""
    roots = [Path(cfg.data.raw) if cfg.data.raw else scenario(cfg.scenario).raw_sample]
    if cfg.data.images:
        roots.append(Path(cfg.data.images))
    return files_fingerprint(roots)


# The config fields of each model that name files on disk: weights converted again (or retrained) at the same path
# change the fingerprint, so the stages that read them run again.
MODEL_FILES = {"llm": ("checkpoint", "tokenizer"), "soft_preference": (), "diffusion": ("path",), "clip": ("path",)}


def _models(cfg: PMGConfig, *names: str) -> dict[str, Any]:
    out = {}
    for name in names:
        section = getattr(cfg.models, name)
        files = [Path(getattr(section, field)) for field in MODEL_FILES[name] if getattr(section, field)]
        out[name] = {**dataclasses.asdict(section), "files": files_fingerprint(files)}
    return out


def _lpips_files(cfg: PMGConfig) -> list:
    """The LPIPS weights' fingerprint, unless the stage converts them itself (``lpips_source``): then the file is
    its own output, made the same from the installed package every time."""
    ecfg = cfg.evaluate
    return files_fingerprint([Path(ecfg.lpips_weights)]) if ecfg.lpips_weights and not ecfg.lpips_source else []


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "research.pmg.data.prepare", (),
          settings=lambda c: {"scenario": c.scenario, "data": _section(c, "data", "out"), "raw": raw_fingerprint(c)},
          outputs=lambda p: [p.data], folders=lambda p: [p.data]),
    Stage("keywords", "research.pmg.keywords", ("prepare",),
          settings=lambda c: {"scenario": c.scenario, "keywords": _section(c, "keywords", "data", "out", "cache"),
                              "models": _models(c, "llm"), "runtime": _runtime(c)},
          outputs=lambda p: [p.keywords, summary_path(p.keywords)], distributed=True),
    Stage("train", "research.pmg.train", ("prepare", "keywords"),
          settings=lambda c: {"scenario": c.scenario, "train": _section(c, "train", "keywords"),
                              "models": _models(c, "llm", "soft_preference", "diffusion"), "runtime": _runtime(c),
                              **_long_prompts(c)},
          outputs=lambda p: [p.checkpoints], owned=lambda p: [p.train], folders=lambda p: [p.train],
          distributed=True, extra_args=lambda p: ["--resume"]),
    Stage("generate", "research.pmg.generate", ("prepare", "keywords", "train"),
          settings=lambda c: {"scenario": c.scenario, "generate": _generate(c),
                              "models": _models(c, "llm", "soft_preference", "diffusion", "clip"),
                              "runtime": _runtime(c)},
          outputs=lambda p: [p.generate], owned=lambda p: [p.generate], folders=lambda p: [p.generate]),
    Stage("evaluate", "research.pmg.evaluate", ("prepare", "keywords", "generate"),
          settings=lambda c: {"scenario": c.scenario, "evaluate": _section(c, "evaluate", "data", "keywords", "out"),
                              "models": _models(c, "clip"), "runtime": _runtime(c),
                              "lpips_files": _lpips_files(c)},
          outputs=lambda p: [p.evaluate], folders=lambda p: [p.evaluate], extra_args=lambda p: ["--run-methods"]),
    Stage("report", "", ("prepare", "keywords", "train", "generate", "evaluate"),
          settings=lambda c: {}, outputs=lambda p: [p.report]),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def pinned(cfg: PMGConfig, paths: Layout) -> list[str]:
    """``--set`` overrides the pipeline adds to every stage's command, where the config is silent.

    ``generate.soft_checkpoint`` empty means keywords only (the baselines set it so), so generation under the
    pipeline is pointed at the training output here. The keywords file is where each stage looks anyway
    (research/pmg/layout.py); it is named all the same, so the configs the stages record (train/config.yaml,
    evaluate/summary.json) say which file they read, and a run's outputs (checksummed in the stamps) stay byte for
    byte those of earlier runs.
    """
    out = []
    if not cfg.train.keywords:
        out.append(f"train.keywords={paths.keywords}")
    if not cfg.generate.keywords:
        out.append(f"generate.keywords={paths.keywords}")
    if not cfg.evaluate.keywords:
        out.append(f"evaluate.keywords={paths.keywords}")
    if not cfg.generate.soft_checkpoint:
        out.append(f"generate.soft_checkpoint={paths.train}")
    return out


def stage_key(stage: Stage, cfg: PMGConfig, input_digests: dict[str, str]) -> str:
    """Hash of the stage's settings and its inputs' output digests: equal keys, equal outputs."""
    payload = {"stage": stage.name, "settings": stage.settings(cfg),
               "inputs": {name: input_digests[name] for name in stage.inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
