"""Baselines from config, for real: train -> generate -> ``evaluate --run-methods`` with the tiny models.

The four methods of the paper's comparison (no personalization, keywords only, soft embedding only, full PMG)
are the ``evaluate:`` section of a config; ``--run-methods`` trains and generates what is missing, then scores
every method. Keywords come from the sample's metadata (standing in for the LLM stage, tested elsewhere).
"""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.pmg.config import load_config
from research.pmg.config.evaluate import EvaluateConfig
from research.pmg.evaluate.methods import MANIFEST, plan_methods, read_images
from research.pmg.layout import Layout
from tests.subprocess_env import stage_env
from tests.tiny_models import REPO, TINY_CONFIG

METHODS = ["no_personalization", "keywords_only", "soft_only", "pmg"]
# The paper's baselines as configured in research/pmg/evaluate/README.md (kept in step with it by this test).
CONFIG = """\
base: {tiny}
runtime:
  output_dir: {root}
train:
  max_steps: 2
  warmup_steps: 1
  lr: 0.01
  save_every: 0
  eval_every: 0
  eval_batches: 1
generate:
  steps: 2
  max_samples: 1
  weight_sets: [[1, 1]]
  contact_sheets: false
evaluate:
  metrics: [ssim]
  max_samples: 1
  bootstrap_samples: 100
  permutations: 100
  baseline: no_personalization
  run_overrides: ["generate.soft_checkpoint={{run_dir}}/train"]
  methods:
    - {{name: no_personalization, overrides: ["generate.preference_keywords=false", "generate.soft_checkpoint="]}}
    - {{name: keywords_only, overrides: ["generate.soft_checkpoint="]}}
    - {{name: soft_only, overrides: ["train.conditioning=soft_only", "generate.preference_keywords=false"]}}
    - {{name: pmg}}
"""


def _stage(stage: str, config: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", f"research.pmg.{stage}", "--config", str(config), "--no-progress",
                           *args], env=stage_env(), cwd=config.parent, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The main run: prepared sticker sample, metadata keywords, 2 training steps, PMG images of 1 test sample."""
    from research.pmg.config.data import DataConfig
    from research.pmg.data.prepare import prepare
    from research.pmg.records.samples import load_prepared

    root = tmp_path_factory.mktemp("methods")
    run = root / "run"
    prepare("stickers", DataConfig(), output_dir=str(run), progress=False)
    data = load_prepared(run / "data")
    (run / "keywords").mkdir()
    lines = [{"id": s.id, "user_id": s.user_id, "target": s.target, "status": "ok",
              "preference_keywords": sorted({k for h in s.history for k in data.items[h].keywords})[:8] or ["x"],
              "target_keywords": list(data.items[s.target].keywords) or ["x"]} for s in data.samples]
    (run / "keywords" / "keywords.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    config = root / "methods.yaml"
    config.write_text(CONFIG.format(tiny=TINY_CONFIG, root=run))
    _stage("train", config)
    _stage("generate", config, "--soft-checkpoint", str(run / "train"))
    return root, config, run


def test_four_methods_run_end_to_end_and_differ_where_they_must(main_run):
    root, config, run = main_run
    out = _stage("evaluate", config, "--run-methods")
    for name in METHODS:
        assert f"  {name} (n=1" in out, out
    methods = {name: read_images(run / "methods" / name / "generate" / "manifest.jsonl" if name != "pmg"
                                 else run / "generate" / "manifest.jsonl") for name in METHODS}
    assert all(len(images) == 1 for images in methods.values()), methods
    (sample,) = methods["pmg"]
    images = {name: _pixels(found[sample]) for name, found in methods.items()}
    # Only soft_only retrains; the others link the main run's training (or use none).
    assert (run / "methods" / "soft_only" / "train" / "checkpoints").is_dir()
    assert not (run / "methods" / "soft_only" / "train").is_symlink()
    assert (run / "methods" / "no_personalization" / "train").is_symlink()
    for a, b in [("no_personalization", "keywords_only"), ("no_personalization", "soft_only"),
                 ("keywords_only", "pmg"), ("soft_only", "pmg")]:
        assert not np.array_equal(images[a], images[b]), f"{a} and {b} made the same image"
    with open(run / "evaluate" / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert sorted({row["method"] for row in table}) == sorted(METHODS)
    assert all(row["n"] == "1" and np.isfinite(float(row["mean"])) for row in table)
    comparison = (run / "evaluate" / "comparison.csv").read_text()
    assert all(f"{name},no_personalization," in comparison for name in METHODS[1:])
    # no_personalization never loads a soft checkpoint, whatever the main run trained: its generation command
    # resolves generate.soft_checkpoint to "" after the run-wide override that points the others at a checkpoint.
    plans = {p.name: p for p in plan_methods(load_config(config).evaluate, output_dir=run, main_images=run / MANIFEST,
                                             config=str(config), overrides=[])}
    settings = [c for c in plans["no_personalization"].commands[-1] if "=" in c]
    assert load_config(config, settings).generate.soft_checkpoint == ""


def test_sweeps_of_s_l_a_and_weight_sets_plan_the_right_runs(tmp_path):
    """S and L retrain (their own soft checkpoints); a and the weight sets only regenerate with the main run's."""
    ecfg = EvaluateConfig(metrics=["ssim"], run_overrides=["generate.soft_checkpoint={run_dir}/train"], sweep={
        "models.soft_preference.prefix_len": [2], "models.soft_preference.num_mm_tokens": [2],
        "generate.a": [0.8], "generate.weight_sets": [[[1, 1]], [[1, 2], [2, 1]]]})
    ecfg.validate("evaluate.")
    plans = {p.name: p for p in plan_methods(ecfg, output_dir=tmp_path, main_images=tmp_path / MANIFEST,
                                             config=str(TINY_CONFIG), overrides=[])}
    assert list(plans) == ["pmg", "prefix_len=2", "num_mm_tokens=2", "a=0.8", "weight_sets=_1_1",
                           "weight_sets=_1_2_2_1"]
    for name, retrains in [("prefix_len=2", True), ("num_mm_tokens=2", True), ("a=0.8", False),
                           ("weight_sets=_1_2_2_1", False)]:
        plan = plans[name]
        assert plan.retrains == retrains
        assert [c[2] for c in plan.commands] == (["research.pmg.train"] if retrains else []) + ["research.pmg.generate"]
        settings = [c for c in plan.commands[-1] if "=" in c]
        cfg = load_config(TINY_CONFIG, settings)
        assert cfg.generate.soft_checkpoint == str(plan.run_dir / "train")
    assert load_config(TINY_CONFIG, [c for c in plans["weight_sets=_1_2_2_1"].commands[-1] if "=" in c]) \
        .generate.weight_sets == [[1, 2], [2, 1]]
    assert load_config(TINY_CONFIG, [c for c in plans["prefix_len=2"].commands[0] if "=" in c]) \
        .models.soft_preference.prefix_len == 2


def _configs_with_a_retraining_method() -> list[str]:
    found = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if "methods:" in path.read_text() and any(m.trains for m in load_config(path).evaluate.all_methods()):
            found.append(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("config", _configs_with_a_retraining_method())
def test_a_method_that_retrains_generates_with_its_own_soft_preference(config, tmp_path, monkeypatch):
    """Under the pipeline, evaluate is started with the main run's ``generate.soft_checkpoint``; a method run that
    trains its own soft preference (soft only, a sweep of S or L) must still generate with that one."""
    monkeypatch.chdir(REPO)
    cfg = load_config(config)
    pinned = [f"generate.soft_checkpoint={tmp_path / 'train'}"]  # what the pipeline passes to evaluate
    plans = [p for p in plan_methods(cfg.evaluate, output_dir=tmp_path, main_images=tmp_path / MANIFEST, config=config,
                                     overrides=pinned) if p.retrains]
    assert plans
    for plan in plans:
        generate = plan.commands[-1]
        settings = [generate[i + 1] for i, arg in enumerate(generate) if arg == "--set"]
        used = load_config(config, settings).generate.soft_checkpoint
        assert Path(used) == plan.run_dir / "train", f"{plan.name} generates with {used}"


def test_a_method_run_writes_its_images_in_its_own_folder_when_the_main_run_names_one(tmp_path, monkeypatch):
    """``generate.out`` of the main run (config or --set) must not reach a method run: every run would write into
    the main run's image folder. A method run generates into ``<run_dir>/generate``, where it is scored from."""
    monkeypatch.chdir(REPO)
    config = "configs/mini/results.yaml"
    pinned = [f"generate.out={tmp_path / 'images'}"]
    for plan in plan_methods(load_config(config, pinned).evaluate, output_dir=tmp_path,
                             main_images=tmp_path / "images" / "manifest.jsonl", config=config, overrides=pinned):
        if plan.run_dir is None:
            assert plan.images == tmp_path / "images" / "manifest.jsonl"
            continue
        generate = plan.commands[-1]
        settings = [generate[i + 1] for i, arg in enumerate(generate) if arg == "--set"]
        assert Layout.of(load_config(config, settings)).generate / "manifest.jsonl" == plan.images, plan.name

