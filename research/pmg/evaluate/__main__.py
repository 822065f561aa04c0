"""Command line of the evaluation stage.

    python -m research.pmg.evaluate --config configs/pog.yaml --set evaluate.lpips_weights=weights/lpips_alex.ckpt
    python -m research.pmg.evaluate --config C --method pmg=output/pog/generate/manifest.jsonl --method base=DIR
    python -m research.pmg.evaluate --config C --plan            # print the runs baselines/sweeps need, and exit
    python -m research.pmg.evaluate --config C --run-methods     # make missing method images first, then evaluate

Settings: the config's ``evaluate:`` section, changed with ``--set``; paths from research/pmg/layout.py.
Bad input ends with one line ``error: ...`` on stderr and exit code 2; the report folder is written whole or
not at all (see research/pmg/evaluate/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from research.pmg.cli import ArgumentParser, add_config_args, add_field_flag, config_from_args, run
from research.pmg.config.evaluate import EvaluateConfig, MethodConfig
from research.pmg.errors import PMGError
from research.pmg.layout import Layout


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.evaluate",
                       description="Score generated images against history and target images (LPIPS, SSIM, CLIP), "
                                   "compare methods and write a report (research/pmg/evaluate/README.md). Settings: "
                                   "the evaluate: section of the config, changed with --set evaluate.<field>=VALUE "
                                   "(see configs/ and research/pmg/config/evaluate.py).")
    add_config_args(p)
    add_field_flag(p, "--data", "evaluate.data", "prepared dataset folder", metavar="DIR")
    add_field_flag(p, "--keywords", "evaluate.keywords", "keywords file", metavar="FILE")
    add_field_flag(p, "--out", "evaluate.out", "report folder", metavar="DIR")
    p.add_argument("--method", action="append", metavar="NAME=IMAGES",
                   help="a method and its images (folder or manifest); repeatable; replaces the configured "
                        "methods and sweep")
    p.add_argument("--plan", action="store_true", help="print each method's images and the runs that make missing "
                                                       "ones, then exit")
    p.add_argument("--run-methods", action="store_true",
                   help="first run training/generation for methods with overrides whose images are missing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def evaluate_config(cfg, args: argparse.Namespace) -> EvaluateConfig:
    """The config's ``evaluate:`` section, its methods replaced by ``--method``; checked for what it needs."""
    ecfg = cfg.evaluate
    if args.method:
        methods = []
        for item in args.method:
            name, sep, images = item.partition("=")
            if not sep or not name.strip() or not images.strip():
                raise PMGError(f"--method {item!r}: expected NAME=IMAGES (a folder or a manifest)")
            methods.append(MethodConfig(name=name.strip(), images=images.strip()))
            methods[-1].validate(f"--method {item}: ")
        ecfg = dataclasses.replace(ecfg, methods=methods, sweep={})
        ecfg.validate("evaluate.")
    ecfg.check_inputs("evaluate.")
    return ecfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    ecfg = evaluate_config(cfg, args)
    layout = Layout.of(cfg)

    from research.pmg import ownership
    from research.pmg.evaluate.methods import MANIFEST, plan_methods, read_images, run_method

    output_dir, out = layout.root, layout.evaluate
    plans = plan_methods(ecfg, output_dir=output_dir, main_images=layout.generate / MANIFEST.name, config=args.config,
                         overrides=args.overrides)
    if args.plan:
        for plan in plans:
            state = ("found" if not plan.missing() else "stale" if plan.images.exists() else "missing")
            print(f"{plan.name}: {plan.images} ({state})")
            for command in plan.commands:
                print(f"  {shlex.join(command)}")
        return 0
    ownership.check(out, "evaluate")  # before any method runs or model loads: someone else's folder is refused
    missing = [plan for plan in plans if plan.missing()]
    if missing and args.run_methods:
        for plan in missing:
            if plan.run_dir is not None:
                run_method(plan, output_dir=output_dir)
        missing = [plan for plan in plans if plan.missing()]
    if missing:
        plan = missing[0]
        hint = ("pass --run-methods to generate them" if plan.run_dir is not None else
                "run the generation stage first, or point the method at its images")
        state = "made with other settings than now" if plan.images.exists() else "not found"
        raise PMGError(f"method {plan.name}: images {state} at {plan.images} ({hint}; "
                       f"{len(missing)} of {len(plans)} methods missing)")

    from research.pmg.runtime import setup_runtime

    runtime = setup_runtime(cfg.runtime)
    from research.pmg.records.samples import load_prepared
    from research.pmg.evaluate.run import evaluate

    data = load_prepared(layout.evaluate_data)
    method_images = {plan.name: read_images(plan.images) for plan in plans}
    keywords = lpips_model = embedder = None
    if "clip" in ecfg.metrics:
        from research.pmg.records.keywords import load_keywords

        keywords = load_keywords(layout.evaluate_keywords)
        from research.pmg.evaluate.clip_metrics import ClipEmbedder
        from research.pmg.models import build_clip_parts, resolve_tokenizers

        parts = build_clip_parts(cfg, runtime, resolve_tokenizers(cfg, runtime))
        embedder = ClipEmbedder(parts, batch_size=ecfg.batch_size, model_path=cfg.models.clip.path)
    if "lpips" in ecfg.metrics:
        from research.pmg.evaluate.lpips_weights import convert_missing_weights
        from research.pmg.models.lpips import load_lpips

        if convert_missing_weights(ecfg.lpips_net, ecfg.lpips_weights, ecfg.lpips_source):
            print(f"evaluate: converted the {ecfg.lpips_source} LPIPS weights ({ecfg.lpips_net}) to {ecfg.lpips_weights}")
        lpips_model = load_lpips(ecfg.lpips_net, ecfg.lpips_weights, what="evaluate.lpips_weights")
    summary = evaluate(ecfg, data=data, method_images=method_images, out=out, keywords=keywords,
                       lpips_model=lpips_model, clip_embedder=embedder, clip_model=cfg.models.clip.path,
                       scenario=cfg.scenario, sources={plan.name: str(plan.images) for plan in plans},
                       run_config=cfg.to_dict(), progress=not args.no_progress)
    print(f"evaluate: {summary['samples']} samples of split {ecfg.split}, {len(method_images)} method(s) -> {out}")
    for method, results in summary["results"].items():
        scores = ", ".join(f"{name} {r['mean']:.4f}" for name, r in results.items() if r["mean"] is not None)
        coverage = summary["methods"][method]
        missing = f", {coverage['missing']} without an image" if coverage["missing"] else ""
        print(f"  {method} (n={coverage['scored']}{missing}): {scores}")
    print(f"  report: {out / 'results.md'}, gallery: {out / 'gallery.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
