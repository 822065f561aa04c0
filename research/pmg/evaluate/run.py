"""The evaluation stage end to end: select samples, score every method, aggregate, compare, write the report.

Output folder (``evaluate.out`` or ``<output_dir>/evaluate``), written whole or not at all, and only over a folder
of this stage's (marked ``.pmg-owned``, research/pmg/ownership.py) or an empty one::

    results.md        settings, scores (mean [interval]) per method, paired comparisons with the baseline
    results.csv       method, metric, n, mean, ci_low, ci_high
    comparison.csv    method, baseline, metric, n, means, difference, interval, p-value
    per_sample.csv    every metric of every sample and method
    chart.png         one bar panel per metric, one bar per method, intervals as whiskers
    gallery.html      the tables, the chart and history | target | generated rows (images in gallery/)
    summary.json      every setting (metrics, models, weights checksum, statistics) and every number; last
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

from research.pmg import ownership, testhooks
from research.pmg.config.evaluate import EvaluateConfig
from research.pmg.errors import PMGError
from research.pmg.evaluate import report
from research.pmg.evaluate.scoring import PairScorer, clip_references, metrics_for, score_method
from research.pmg.evaluate.ssim import SSIMSettings
from research.pmg.evaluate.stats import bootstrap_ci, paired_comparison
from research.pmg.files import write_synced
from research.pmg.images import RESAMPLE_NAME
from research.pmg.records.samples import PreparedData, Sample

FORMAT_VERSION = 1


def select_samples(data: PreparedData, ecfg: EvaluateConfig) -> list[Sample]:
    samples = data.split(ecfg.split)
    if ecfg.max_samples:
        samples = samples[:ecfg.max_samples]
    if not samples:
        raise PMGError(f"{data.root}: no samples in split {ecfg.split!r} to evaluate")
    return samples


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluate(ecfg: EvaluateConfig, *, data: PreparedData, method_images: Mapping[str, Mapping[str, Path]],
             out: Path, keywords: Mapping[str, Any] | None = None, lpips_model=None, clip_embedder=None,
             clip_model: str = "", scenario: str = "", sources: Mapping[str, str] | None = None,
             run_config: dict | None = None, progress: bool = True) -> dict[str, Any]:
    """Score ``method_images`` ({method: {sample id: image}}) on the selected samples and write the report.

    ``lpips_model`` (an :class:`~research.pmg.models.lpips.LPIPS`) and ``clip_embedder`` (a
    :class:`~research.pmg.evaluate.clip_metrics.ClipEmbedder`) are needed when ``ecfg.metrics`` name
    them; ``keywords`` ({sample id: record with preference_keywords/target_keywords}) feeds the CLIP text
    scores. ``sources`` ({method: where its images came from}) and ``run_config`` are recorded. Returns the
    summary written to ``summary.json`` (non-finite numbers as null).
    """
    from tqdm import tqdm

    def bar(iterable, desc: str = ""):
        return tqdm(iterable, desc=desc, disable=not progress, leave=False)

    ownership.check(out, "evaluate")  # before scoring: someone else's folder is refused at once
    metrics = metrics_for(ecfg.metrics)
    samples = select_samples(data, ecfg)
    use_clip = "clip" in ecfg.metrics
    if use_clip and (clip_embedder is None or keywords is None):
        raise ValueError("CLIP metrics need a clip_embedder and keywords")
    if "lpips" in ecfg.metrics and lpips_model is None:
        raise ValueError("LPIPS needs an lpips_model")
    ssim_settings = SSIMSettings(sigma=ecfg.ssim_sigma) if "ssim" in ecfg.metrics else None
    pairs = PairScorer(lpips_model=lpips_model if "lpips" in ecfg.metrics else None, ssim_settings=ssim_settings,
                       batch_size=ecfg.batch_size) if {"lpips", "ssim"} & set(ecfg.metrics) else None
    references = clip_references(clip_embedder, samples, data, keywords, bar) if use_clip else None

    records: dict[str, list[dict]] = {}
    coverage = {}
    for method, images in method_images.items():
        scored = [s for s in samples if s.id in images]
        if not scored:
            raise PMGError(f"method {method}: no image for any of the {len(samples)} samples of split "
                           f"{ecfg.split!r} (e.g. {samples[0].id!r})")
        coverage[method] = {"scored": len(scored), "missing": len(samples) - len(scored)}
        records[method] = score_method(samples, images, data, image_size=ecfg.image_size, resize=ecfg.resize,
                                       pairs=pairs, embedder=clip_embedder if use_clip else None,
                                       references=references, clip_scale=ecfg.clip_scale,
                                       clip_clamp=ecfg.clip_clamp, chunk=16, progress=bar, desc=method)

    stat = dict(samples=ecfg.bootstrap_samples, confidence=ecfg.confidence, seed=ecfg.seed)
    results = {method: {m.name: bootstrap_ci([r[m.name] for r in rs], **stat) for m in metrics}
               for method, rs in records.items()}
    baseline = ecfg.baseline or next(iter(records))
    if baseline not in records:
        raise PMGError(f"evaluate.baseline: {baseline!r} is not one of the methods {list(records)}")
    comparisons = {}
    base = {r["sample"]: r for r in records[baseline]}
    for method, rs in records.items():
        if method == baseline:
            continue
        common = [r for r in rs if r["sample"] in base]
        comparisons[method] = {
            m.name: paired_comparison([r[m.name] for r in common], [base[r["sample"]][m.name] for r in common],
                                      permutations=ecfg.permutations, **stat) for m in metrics}

    settings = {
        "format_version": FORMAT_VERSION, "scenario": scenario, "split": ecfg.split, "samples": len(samples),
        "data": str(data.root),
        "methods": {m: {"images": (sources or {}).get(m), **coverage[m]} for m in records},
        "baseline": baseline, "metrics": list(ecfg.metrics), "image_size": ecfg.image_size,
        "resize": {"policy": ecfg.resize, "resample": RESAMPLE_NAME, "transparency": "composited over white"},
        "lpips": None, "ssim": ssim_settings.to_dict() if ssim_settings else None, "clip": None,
        "statistics": {"interval": "percentile bootstrap of the mean", "bootstrap_samples": ecfg.bootstrap_samples,
                       "confidence": ecfg.confidence,
                       "paired_test": "two-sided sign-flip permutation test of the per-sample differences",
                       "permutations": ecfg.permutations, "seed": ecfg.seed},
        "evaluate": dataclasses.asdict(ecfg),
    }
    if "lpips" in ecfg.metrics:
        settings["lpips"] = {"version": "0.1", "net": ecfg.lpips_net, "weights": ecfg.lpips_weights,
                             "sha256": sha256_of(ecfg.lpips_weights), "input": "RGB in [-1, 1], ScalingLayer",
                             "reduction": "spatial average, sum over the 5 layers"}
    if use_clip:
        settings["clip"] = {**clip_embedder.describe(clip_model), "scale": ecfg.clip_scale, "clamp": ecfg.clip_clamp}
    summary = _finite_or_null({
        **settings, "results": {m: {k: v.to_dict() for k, v in r.items()} for m, r in results.items()},
        "comparisons": {m: {k: v.to_dict() for k, v in c.items()} for m, c in comparisons.items()}})
    if run_config is not None:
        summary["config"] = run_config

    title = f"PMG evaluation: {scenario or data.root.name}, split {ecfg.split}, {len(samples)} samples"
    gallery_rows = _gallery_rows(samples, records, data, keywords, ecfg.gallery_samples)
    with ownership.staged(out, "evaluate") as tmp:
        report.per_sample_csv(tmp / "per_sample.csv", records, metrics)
        testhooks.hold("evaluate", "report-started")
        report.results_csv(tmp / "results.csv", results, metrics)
        report.comparison_csv(tmp / "comparison.csv", comparisons, baseline, metrics)
        write_synced(tmp / "results.md",
                     report.markdown(title, settings, results, comparisons, baseline, metrics).encode("utf-8"))
        report.bar_chart(tmp / "chart.png", results, metrics, title)
        report.gallery(tmp, gallery_rows, list(records), metrics, title=title, thumb=ecfg.gallery_thumb,
                       intro_html=report.intro_html(settings, results, metrics, "chart.png"))
        write_synced(tmp / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return summary


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None: strict JSON, and "no value" reads as such."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def _gallery_rows(samples: list[Sample], records: Mapping[str, list[dict]], data: PreparedData,
                  keywords: Mapping[str, Any] | None, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` samples (dataset order) that every method has an image for."""
    by_method = {m: {r["sample"]: r for r in rs} for m, rs in records.items()}
    rows = []
    for sample in samples:
        if len(rows) >= limit:
            break
        if not all(sample.id in rs for rs in by_method.values()):
            continue
        record = (keywords or {}).get(sample.id)
        rows.append({"sample": sample.id, "history": [data.image_path(i) for i in sample.history],
                     "target": data.image_path(sample.target),
                     "preference": ", ".join(record.preference_keywords) if record else "",
                     "target_keywords": ", ".join(record.target_keywords) if record else "",
                     "generated": {m: Path(rs[sample.id]["image"]) for m, rs in by_method.items()},
                     "scores": {m: rs[sample.id] for m, rs in by_method.items()}})
    return rows
