"""The library API and the single-user command (research/pmg/api): requests checked before any model runs, free
items through the keyword and generation stages, one error line for bad input.

What needs the trained PMG-mini (the same chosen image as split-wide generation, no compile on a second call) is
in tests/test_mini_pmg.py, beside the main job it reuses.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from research.pmg.api.request import FreeItem, RequestError, check_n, load_request, resolve
from research.pmg.records.samples import Item
from tests.bad_input_helpers import assert_one_error_line
from tests.subprocess_env import stage_env

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "configs" / "mini" / "pmg.yaml"
STICKERS = REPO / "research" / "pmg" / "assets" / "mini" / "world" / "images"


def _sticker(name: str) -> Path:
    path = STICKERS / name
    assert path.is_file(), path
    return path


def test_an_unknown_id_is_named_with_its_place(tmp_path):
    items = {"1f431": Item(id="1f431", title="cat face", image="images/1f431.png")}
    item, path = resolve("1f431", items, "history[0]", free_id="x")
    assert item is items["1f431"] and path is None
    with pytest.raises(RequestError, match=r"^history\[3\]: unknown item id '1f999' \(not among the 1 items"):
        resolve("1f999", items, "history[3]", free_id="x")


def test_free_items_are_checked_field_by_field(tmp_path):
    image = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), "orange").save(image)
    item, path = resolve({"title": "my cat", "image": "cat.png", "keywords": ["orange"]}, {}, "target",
                         base=tmp_path, free_id="request-t")
    assert (item.id, item.title, item.keywords, path) == ("request-t", "my cat", ("orange",), image.resolve())
    assert resolve(FreeItem(title="my cat", image=image), {}, "target", free_id="t")[0].title == "my cat"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases = [({"title": "x"}, r"target\.image: must be the path"),
             ({"title": "", "image": "cat.png"}, r"target\.title: must not be empty"),
             ({"title": 3, "image": "cat.png"}, r"target\.title: must be text"),
             ({"title": "x", "image": "gone.png"}, r"target\.image: .*gone\.png: no such file"),
             ({"title": "x", "image": "broken.png"}, r"target\.image: .*broken\.png: cannot read image"),
             ({"title": "x", "image": "cat.png", "colour": "red"}, r"target: unknown field 'colour'"),
             ({"title": "x", "image": "cat.png", "genres": "Drama"}, r"target\.genres: must be a list of texts"),
             (["x"], r"target: must be an item id or a free item")]
    for entry, message in cases:
        with pytest.raises(RequestError, match=message):
            resolve(entry, {}, "target", base=tmp_path, free_id="t")


def test_request_files(tmp_path):
    good = tmp_path / "request.json"
    good.write_text(json.dumps({"history": ["a", {"title": "b", "image": "b.png"}], "target": "c", "n": 2}))
    request, base = load_request(good)
    assert (request.history[0], request.target, request.n, request.conversation, base) == ("a", "c", 2, (), tmp_path)
    cases = [("{", r"request\.json: not valid JSON: line 1 column 2"),
             ("[]", r"must be a JSON object"),
             ('{"history": ["a"]}', r"missing field 'target'"),
             ('{"history": [], "target": "c"}', r"history: is empty"),
             ('{"history": "a", "target": "c"}', r"history: must be a list"),
             ('{"history": ["a"], "target": "c", "n": 0}', r"n: must be a whole number from 1 to 64, got 0"),
             ('{"history": ["a"], "target": "c", "extra": 1}', r"unknown field 'extra'"),
             ('{"history": ["a"], "target": "c", "conversation": [1]}', r"conversation\[0\]: must be text")]
    for text, message in cases:
        good.write_text(text)
        with pytest.raises(RequestError, match=message):
            load_request(good)
    good.write_bytes(b"\xff\xfe")
    with pytest.raises(RequestError, match="not UTF-8"):
        load_request(good)
    with pytest.raises(RequestError, match="no such request file"):
        load_request(tmp_path / "none.json")
    assert check_n(None) is None and check_n(64) == 64
    for bad in (True, 1.0, 65):
        with pytest.raises(RequestError):
            check_n(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The command, run from the repository root (config paths are relative to where a command runs)."""
    return subprocess.run([sys.executable, "-m", "research.pmg.api", *args], cwd=REPO, capture_output=True, text=True,
                          env=stage_env(), timeout=900)


@pytest.mark.parametrize("args,message", [
    (["--history", "1f431,nope", "--target", "1f370"], r"^error: history\[1\]: unknown item id 'nope'"),
    (["--history", "1f431", "--target", "1f431"], r"^error: target: item '1f431' is also in the history"),
    (["--history", "1f431,,1f408", "--target", "1f370"], r"^error: --history '1f431,,1f408': an empty id"),
    (["--user", "nobody"], r"^error: user 'nobody': no sample in splits \['test'\]"),
    (["--history", "1f431"], r"^error: --history needs --target"),
    (["--request", "{tmp}/bad.json"], r"^error: .*bad\.json: not valid JSON: line 1 column 14"),
])
def test_the_command_answers_bad_input_with_one_error_line(tmp_path, args, message):
    """Bad ids and bad JSON stop before any model loads: one ``error:`` line, exit 2, nothing written."""
    (tmp_path / "bad.json").write_text('{"history": [}')
    out = tmp_path / "out"
    run = _cli("--config", str(MINI), "--set", f"runtime.output_dir={out}",
               *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert re.match(message, assert_one_error_line(run)), run.stderr
    assert not (out / "infer").exists()


@pytest.fixture(scope="module")
def mini(tmp_path_factory, runtime):
    """PMG-mini through the API in this process, keywords only (no training folder): the mini models, the
    session's CPU runtime."""
    from research.pmg.api import PMG

    out = tmp_path_factory.mktemp("api") / "mini"
    return PMG.from_config(MINI, [f"runtime.output_dir={out}"], runtime=runtime)


def test_free_items_go_through_both_stages(mini, tmp_path):
    """A history of the user's own pictures: keywords from the mini LLM (cached for the next call), K x n
    candidates scored as the selection rule says, and the same request giving the same images."""
    from research.pmg.generate.select import select

    for name in ("1f431.png", "1f408.png", "1f370.png"):
        (tmp_path / name).write_bytes(_sticker(name).read_bytes())
    history = [{"title": "cat face", "image": "1f431.png", "category": "cats"},
               FreeItem(title="cat", image=tmp_path / "1f408.png", category="cats")]
    target = {"title": "shortcake", "image": "1f370.png", "category": "food"}
    first = mini.personalize(history, target, n=2, base=tmp_path)
    assert not first.prepared and first.sample.startswith("request-") and not first.soft
    assert first.preference_keywords and first.target_keywords
    k = len(mini.cfg.generate.weight_sets)
    assert [(c.k, c.m) for c in first.candidates] == [(i, j) for i in range(k) for j in range(2)]
    assert all(c.image.shape == (32, 32, 3) and c.image.dtype == np.uint8 for c in first.candidates)
    rule = select([c.d_p for c in first.candidates], [c.d_t for c in first.candidates],
                  mini.cfg.generate.a, mini.cfg.generate.score_form)
    assert first.chosen == rule.chosen and [c.chosen for c in first.candidates].index(True) == rule.chosen
    np.testing.assert_allclose([c.z for c in first.candidates], rule.z, rtol=0, atol=1e-12)
    again = mini.personalize(history, target, n=2, base=tmp_path)
    assert again.sample == first.sample
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first.candidates, again.candidates))
    other = mini.personalize(history[:1], target, n=2, base=tmp_path)
    assert other.sample != first.sample  # another request, other noise
    assert not np.array_equal(other.candidates[0].image, first.candidates[0].image)
    saved = json.loads(first.save(tmp_path / "saved").read_text())
    assert saved["preference_keywords"] == list(first.preference_keywords)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "saved" / "chosen.png")), first.image)
    sheet = Image.open(tmp_path / "saved" / "sheet.png")
    assert sheet.width > (2 + 1 + 2 * k) * 160  # history, target, candidates and the chosen one, side by side
