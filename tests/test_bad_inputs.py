"""Bad-input survey: every command line, fed malformed input, ends with one ``error:`` line and exit code 2.

Table-driven: each case is (command, arguments, text the error must contain). Every case runs as a user
would run it, ``python -m ...`` in a fresh interpreter; the cases run two at a time in a module fixture and
each is checked by its own test. Checked: exit code 2, exactly one line starting with ``error:``, which is
the last line on stderr and names the problem, and no Python traceback anywhere in the output.
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from research.pmg.config.data import DataConfig
from research.pmg.data.prepare import prepare
from tests.bad_input_helpers import assert_one_error_line
from tests.subprocess_env import stage_env
from tests.tiny_models import TINY_CONFIG

PREPARE, KEYWORDS, TRAIN, GENERATE, EVALUATE, CONVERT, PIPELINE = (
    "research.pmg.data.prepare", "research.pmg.keywords", "research.pmg.train", "research.pmg.generate",
    "research.pmg.evaluate", "ckpt_convert", "research.pmg.pipeline")
CONFIGURED = (PREPARE, KEYWORDS, TRAIN, GENERATE, EVALUATE, PIPELINE)  # the commands that read a PMG config


def _cases(w: Path) -> list[tuple[str, str, list[str], str]]:
    """(case id, module, argv, expected text). ``w`` is the workspace the ``world`` fixture fills."""
    cfg = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={w / 'out'}"]
    data = ["--set", f"data.out={w / 'data'}"]
    own = lambda name: ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={w / name}"]  # noqa: E731
    kw = w / "keywords.jsonl"
    cases = []
    for module in CONFIGURED:  # what every configured command shares
        short = module.rsplit(".", 1)[-1]
        cases += [
            (f"{short}-missing-config", module, ["--config", str(w / "absent.yaml")],
             "absent.yaml: config file not found"),
            (f"{short}-wrong-type", module, [*cfg, "--set", "train.lr=fast"], "field 'train.lr' must be a number"),
            (f"{short}-unknown-scenario", module, [*cfg, "--set", "scenario=films"], "field 'scenario' = 'films'"),
            (f"{short}-unknown-field", module, [*cfg, "--set", "train.lrr=1"], "unknown field 'train.lrr'"),
            (f"{short}-bad-override", module, [*cfg, "--set", "train.lr"], "expected key.path=value"),
            (f"{short}-not-yaml", module, ["--config", str(w / "notes.txt")], "top level must be a mapping"),
        ]
    cases += [
        ("prepare-no-scenario", PREPARE, [], "--scenario is required without --config"),
        ("prepare-unknown-scenario-flag", PREPARE, ["--scenario", "films"], "invalid choice: 'films'"),
        ("prepare-missing-raw", PREPARE, ["--scenario", "pog", "--raw", str(w / "absent")],
         "raw data folder not found"),
        ("prepare-missing-files", PREPARE, ["--scenario", "pog", "--raw", str(w / "empty_dir"), "--out",
                                            str(w / "p1")], "item_data.txt"),
        ("prepare-empty-dataset", PREPARE, ["--scenario", "pog", "--raw", str(w / "pog_empty"), "--out",
                                            str(w / "p2")], "no usable sample"),
        ("prepare-wrong-value-type", PREPARE, ["--scenario", "pog", "--set", "data.history_len=five"],
         "field 'data.history_len' must be an integer, got 'five'"),
        ("prepare-bad-value", PREPARE, ["--scenario", "pog", "--set", "data.valid_fraction=1.5"], "valid_fraction"),
        ("prepare-out-is-file", PREPARE, ["--scenario", "stickers", "--out", str(w / "notes.txt")],
         "exists and is not a folder"),
        ("keywords-missing-data", KEYWORDS, [*cfg, "--data", str(w / "absent")], "is not a prepared dataset"),
        ("keywords-empty-dataset", KEYWORDS, [*cfg, "--data", str(w / "data_empty")], "no sample in splits"),
        ("keywords-unknown-split", KEYWORDS, [*cfg, *data, "--set", "keywords.splits=[dev]"], "'dev' is not one of"),
        ("keywords-wrong-value-type", KEYWORDS, [*cfg, *data, "--set", "keywords.batch_size=many"],
         "field 'keywords.batch_size' must be an integer, got 'many'"),
        ("keywords-bad-value", KEYWORDS, [*cfg, *data, "--set", "keywords.batch_size=0"], "batch_size: must be > 0"),
        ("keywords-missing-templates", KEYWORDS, [*cfg, *data, "--set", f"keywords.templates={w / 'absent.yaml'}"],
         "absent.yaml"),
        ("train-missing-data", TRAIN, [*cfg, "--set", f"data.out={w / 'absent'}"], "is not a prepared dataset"),
        ("train-missing-keywords", TRAIN, [*cfg, *data, "--set", f"train.keywords={w / 'absent.jsonl'}"],
         "keywords file not found"),
        ("train-malformed-keywords", TRAIN, [*cfg, *data, "--set", f"train.keywords={w / 'broken.jsonl'}"],
         "broken.jsonl:2: not valid JSON"),
        ("train-empty-dataset", TRAIN, [*cfg, *data, "--set", f"train.keywords={w / 'empty.jsonl'}"],
         "no training examples"),
        ("train-mismatched-checkpoint", TRAIN, [*own("run"), *data, "--set", f"train.keywords={kw}", "--resume"],
         "does not match the model"),
        ("generate-missing-checkpoint", GENERATE, [*cfg, *data, "--keywords", str(kw), "--soft-checkpoint",
                                                   str(w / "absent")], "no soft_preference.ckpt there"),
        ("generate-mismatched-checkpoint", GENERATE, [*cfg, *data, "--keywords", str(kw), "--soft-checkpoint",
                                                      str(w / "other.ckpt"), "--set", "generate.steps=1"],
         "does not match the model"),
        ("generate-missing-keywords", GENERATE, [*cfg, *data, "--keywords", str(w / "absent.jsonl")],
         "keywords file not found"),
        ("generate-empty-dataset", GENERATE, [*cfg, *data, "--keywords", str(w / "empty.jsonl")],
         "no samples to generate"),
        ("generate-wrong-value-type", GENERATE, [*cfg, "--set", "generate.weight_sets=[[1, heavy]]"],
         "field 'generate.weight_sets[0][1]' must be a number, got 'heavy'"),
        ("generate-bad-value", GENERATE, [*cfg, "--set", "generate.guidance=0.5"], "guidance: must be >= 1"),
        ("generate-unknown-split", GENERATE, [*cfg, "--set", "generate.splits=[dev]"], "'dev' is not one of"),
        ("evaluate-missing-images", EVALUATE, [*cfg, *data, "--set", "evaluate.metrics=[ssim]", "--method",
                                               f"x={w / 'absent'}"],
         "images not found at"),
        ("evaluate-empty-images", EVALUATE, [*cfg, *data, "--set", "evaluate.metrics=[ssim]", "--method",
                                             f"x={w / 'empty_dir'}"],
         "no image for any of the"),
        ("evaluate-unknown-metric", EVALUATE, [*cfg, "--set", "evaluate.metrics=[fid]"], "'fid' is not one of"),
        ("evaluate-missing-lpips", EVALUATE, [*cfg, "--set", "evaluate.metrics=[lpips]"], "lpips_weights: needed"),
        ("evaluate-unknown-split", EVALUATE, [*cfg, "--set", "evaluate.split=dev"],
         "field 'evaluate.split' = 'dev'; choose one of"),
        ("evaluate-malformed-method", EVALUATE, [*cfg, "--method", "x"], "expected NAME=IMAGES"),
        ("convert-unknown-family", CONVERT, ["gpt"], "invalid choice: 'gpt'"),
        ("convert-missing-args", CONVERT, ["llama"], "the following arguments are required"),
        ("convert-missing-src", CONVERT, ["clip", "--src", str(w / "absent"), "--dst", str(w / "c")], "not a folder"),
        ("convert-missing-file", CONVERT, ["lpips", "--src", str(w / "absent.pth"), "--dst", str(w / "l.ckpt")],
         "absent.pth: file not found"),
        ("convert-wrong-dst", CONVERT, ["llama", "--src", str(w), "--dst", str(w / "x.bin")],
         "--dst must name a .ckpt file"),
        ("convert-wrong-type", CONVERT, ["sd", "--src", str(w / "notes.txt"), "--dst", str(w / "sd")], "notes.txt"),
        ("pipeline-unknown-stage", PIPELINE, [*cfg, "--stages", "prepare,paint"], "stages are prepare"),
        ("pipeline-unknown-force", PIPELINE, [*cfg, "--force", "paint"], "stages are prepare"),
        ("pipeline-bad-nproc", PIPELINE, [*cfg, "--nproc", "0"], "--nproc 0: must be >= 1"),
        ("pipeline-wrong-flag-type", PIPELINE, [*cfg, "--nproc", "two"], "invalid int value: 'two'"),
        ("pipeline-stage-error", PIPELINE, [*own("p1"), "--set", f"data.raw={w / 'absent'}"],
         "stage prepare failed (exit 2):"),
        ("pipeline-needs-earlier", PIPELINE, [*own("p2"), "--stages", "train"], "stage prepare is not complete"),
    ]
    return cases


CASE_IDS = [case[0] for case in _cases(Path("/w"))]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Inputs for the cases: a small prepared dataset, keywords for it, broken and empty variants."""
    w = tmp_path_factory.mktemp("bad-inputs")
    prepare("stickers", DataConfig(out=str(w / "data"), max_users=3), progress=False)
    prepare("stickers", DataConfig(out=str(w / "data_empty"), max_users=3), progress=False)
    (w / "data_empty" / "samples.jsonl").write_text("")
    samples = [json.loads(line) for line in (w / "data" / "samples.jsonl").read_text().splitlines()]
    records = [json.dumps({"id": s["id"], "user_id": s["user_id"], "target": s["target"], "status": "ok",
                           "preference_keywords": ["cute", "animal"], "target_keywords": ["cat"]}) for s in samples]
    (w / "keywords.jsonl").write_text("".join(r + "\n" for r in records))
    (w / "broken.jsonl").write_text(records[0] + "\n{not json\n")
    (w / "empty.jsonl").write_text("")
    (w / "empty_dir").mkdir()
    (w / "pog_empty").mkdir()
    for name in ("item_data.txt", "outfit_data.txt", "user_data.txt"):
        (w / "pog_empty" / name).write_text("")
    (w / "pog_empty" / "images").mkdir()
    (w / "notes.txt").write_text("just some notes\n")

    import mindspore as ms

    bogus = [{"name": "not.a.parameter", "data": ms.Tensor(np.zeros((3,), np.float32))}]
    ms.save_checkpoint(bogus, str(w / "other.ckpt"))
    step = w / "run" / "train" / "checkpoints" / "step-000001"
    step.mkdir(parents=True)
    ms.save_checkpoint(bogus, str(step / "train_state.ckpt"))
    ms.save_checkpoint(bogus, str(step / "soft_preference.ckpt"))
    (step / "meta.json").write_text(json.dumps({"step": 1}))
    return w


@pytest.fixture(scope="module")
def results(world) -> dict[str, subprocess.CompletedProcess]:
    env = stage_env()

    def one(case):
        name, module, argv, _ = case
        return name, subprocess.run([sys.executable, "-m", module, *argv], cwd=world, env=env, capture_output=True,
                                    text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, _cases(world)))


@pytest.mark.parametrize("name", CASE_IDS)
def test_bad_input_is_one_error_line_with_exit_2(name, results, world):
    expected = next(case[3] for case in _cases(world) if case[0] == name)
    line = assert_one_error_line(results[name])
    assert expected in line, line


def test_every_command_line_is_surveyed():
    modules = {case[1] for case in _cases(Path("/w"))}
    assert modules == {PREPARE, KEYWORDS, TRAIN, GENERATE, EVALUATE, CONVERT, PIPELINE}
    for module in modules - {CONVERT}:
        kinds = {case[0].split("-", 1)[1] for case in _cases(Path("/w")) if case[1] == module}
        assert {"missing-config", "wrong-type", "unknown-scenario"} <= kinds, module
