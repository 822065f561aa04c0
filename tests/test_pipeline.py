"""The one-command pipeline: a full run, a re-run that skips everything, a change that re-runs only what it
affects."""
from __future__ import annotations

import json
import os

import pytest

from research.pmg.config import load_config
from research.pmg.layout import Layout
from research.pmg.pipeline.stages import BY_NAME, stage_key
from tests.pipeline_helpers import CONFIG, STAGES, copy_reference, digests, run_pipeline, stamps


@pytest.fixture(scope="module")
def reference(pipeline_reference):
    return pipeline_reference


def test_full_run_writes_every_stage_and_the_report(reference):
    root = reference["path"]
    out = reference["proc"].stdout
    for number, stage in enumerate(STAGES, start=1):
        assert f"[{number}/6] {stage}: done in" in out, out
    assert "pipeline complete:" in out
    assert all(s["state"] == "done" for s in stamps(root).values()) and len(stamps(root)) == 6
    report = (root / "report.md").read_text()
    for section in ("## Stages", "## Data", "## Keywords", "## Training", "## Generation", "## Evaluation", "SSIM"):
        assert section in report, section
    assert (root / "evaluate" / "results.md").is_file() and (root / "generate" / "manifest.jsonl").is_file()
    assert sorted(p.name for p in (root / "train" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    # every stage's output is checksummed in its stamp; nothing half-written (hidden temp names) is left over
    assert all(s["files"] for s in stamps(root).values())
    leftovers = [p for p in root.rglob("*") if p.name.endswith((".partial", ".tmp")) or ".tmp-" in p.name]
    assert not leftovers, leftovers


def test_rerun_skips_every_stage(reference):
    """Nothing runs again: no stage process is started (the runner logs every start in the stage's log), so no
    model is built; only the recorded checksums are read."""
    root = copy_reference(reference, "rerun")
    before = digests(root)
    logs = {p: p.read_bytes() for p in (root / "log" / "pipeline").glob("*.log")}
    assert sorted(p.stem for p in logs) == sorted(s for s in STAGES if s != "report")
    proc = run_pipeline(root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("up to date (skipped)") == 6, proc.stdout
    assert "running (log:" not in proc.stdout, proc.stdout
    assert {p: p.read_bytes() for p in (root / "log" / "pipeline").glob("*.log")} == logs
    assert digests(root) == before


def test_changed_setting_reruns_only_the_stages_it_affects(reference):
    root = copy_reference(reference, "changed")
    before = stamps(root)
    # up to generation: evaluation would follow the same rule (its input changed) and only cost time here
    proc = run_pipeline(root, "--stages", "prepare,keywords,train,generate", overrides=("generate.guidance=3.0",))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    for stage in ("prepare", "keywords", "train"):
        assert f"{stage}: up to date (skipped)" in out
    assert "generate: settings or inputs changed" in out and "generate.stale-" in out
    assert "evaluate" not in out
    after = stamps(root)
    assert [s for s in STAGES if after[s]["key"] != before[s]["key"]] == ["generate"]
    assert after["generate"]["digest"] != before["generate"]["digest"]
    assert json.loads((root / "generate" / "settings.json").read_text())["guidance"] == 3.0
    assert list(root.glob("generate.stale-*/manifest.jsonl"))  # the old results are kept aside, not mixed in


def test_stage_keys_follow_settings_and_inputs(tmp_path):
    cfg = load_config(CONFIG, [f"runtime.output_dir={tmp_path}"])
    other = load_config(CONFIG, [f"runtime.output_dir={tmp_path / 'elsewhere'}", "generate.steps=3",
                                 "runtime.num_threads=1"])
    inputs = {name: "d" for name in STAGES}
    same = [s for s in STAGES if stage_key(BY_NAME[s], cfg, inputs) == stage_key(BY_NAME[s], other, inputs)]
    assert same == ["prepare", "keywords", "train", "evaluate", "report"]  # paths and threads do not count
    changed_input = dict(inputs, keywords="e")
    assert stage_key(BY_NAME["train"], cfg, changed_input) != stage_key(BY_NAME["train"], cfg, inputs)
    assert stage_key(BY_NAME["prepare"], cfg, changed_input) == stage_key(BY_NAME["prepare"], cfg, inputs)
    assert Layout.of(cfg).report == tmp_path / "report.md"


def test_model_files_replaced_at_the_same_path_rerun_the_stages_that_read_them(tmp_path):
    clip, tokenizer = tmp_path / "clip", tmp_path / "tokenizer.model"
    clip.mkdir()
    (clip / "model.safetensors").write_bytes(b"a" * 10)
    tokenizer.write_bytes(b"t")
    inputs = {name: "d" for name in STAGES}

    def keys():
        cfg = load_config(CONFIG, [f"runtime.output_dir={tmp_path}", f"models.clip.path={clip}",
                                   f"models.llm.tokenizer={tokenizer}"])
        return {s: stage_key(BY_NAME[s], cfg, inputs) for s in STAGES}

    before = keys()
    assert keys() == before  # nothing changed on disk: nothing re-runs
    (clip / "model.safetensors").write_bytes(b"b" * 11)  # CLIP converted again
    after_clip = keys()
    assert [s for s in STAGES if after_clip[s] != before[s]] == ["generate", "evaluate"]
    tokenizer.write_bytes(b"u")
    os.utime(tokenizer, ns=(1, 1))  # same size, other time: a replaced file
    after_tokenizer = keys()
    assert [s for s in STAGES if after_tokenizer[s] != after_clip[s]] == ["keywords", "train", "generate"]


def test_default_config_is_offline_and_complete():
    cfg = load_config(CONFIG)
    models = cfg.models
    assert not (models.llm.checkpoint or models.llm.tokenizer or models.diffusion.path or models.clip.path)
    assert cfg.runtime.device == "CPU" and not cfg.data.raw  # the bundled sample
    assert "lpips" not in cfg.evaluate.metrics  # LPIPS weights cannot exist offline; SSIM and CLIP can
