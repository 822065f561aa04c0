"""POG reader: the released comma-separated files -> exactly the expected samples, defects named and counted."""
import random

import pytest

from research.pmg.data.sampling import hashed_split
from research.pmg.errors import DataError
from tests.data_fixtures import issues, items, run, samples, tree_bytes, write_images, write_text

ITEM_DATA = """\
101,c1,//img.example/101.jpg,Red, white and blue striped shirt, cotton
102,c2,//img.example/102.jpg,Blue jeans
103,c3,//img.example/103.jpg,White sneakers
104,c1,//img.example/104.jpg,Green hoodie
105,c2,//img.example/105.jpg,Black skirt
106,c4,//img.example/106.jpg,红色 手提包, 夏季
107,c3,//img.example/107.jpg,Brown boots
108,c1,//img.example/108.jpg,Yellow tee
102,c9,//img.example/x.jpg,Duplicate of 102
a line without enough fields
"""
OUTFIT_DATA = """\
o1,102;103;106
o2,101;999
o3,104;105
"""
USER_DATA = """\
u1,101;102;104;107;108;103,o1
u2,108;555,o2
u3,,o1
u4,101;102,o9
u5,101;102;103,o3
u6,101,102,o1
"""


@pytest.fixture
def pog_raw(tmp_path):
    """104 has no image, 105 is a truncated JPEG; ids 555, 999 and outfit o9 exist nowhere."""
    raw = write_text(tmp_path / "POG", {"item_data.txt": ITEM_DATA, "outfit_data.txt": OUTFIT_DATA,
                                        "user_data.txt": USER_DATA})
    write_images(raw / "images", ["101", "102", "103", "106", "107", "108"], corrupt=["105"])
    return raw


def expected_target(seed, user, line, candidates):
    return random.Random(f"{seed}:{user}:{line}").choice(candidates)


def test_fixture_gives_exactly_the_expected_samples(pog_raw, tmp_path):
    summary, report = run("pog", pog_raw, tmp_path / "out", history_len=3, min_history=1, seed=7,
                          valid_fraction=0.0, test_fraction=0.0)
    u1_target = expected_target(7, "u1", 1, ["102", "106"])
    assert samples(tmp_path / "out") == [
        # last 3 distinct clicks with a usable image (104 has none); target from o1 minus the history
        ("u1:0", "u1", ["107", "108", "103"], u1_target, "train"),
        # 555 is unknown; o2's only known, usable item is 101
        ("u2:0", "u2", ["108"], "101", "train"),
    ]
    assert u1_target == "102"  # the documented rule, pinned: random.Random("7:u1:1").choice(["102", "106"])
    assert issues(report) == {
        ("item_data.txt", 9, "duplicate_id"), ("item_data.txt", 10, "malformed_row"),
        ("user_data.txt", 2, "unknown_id"), ("user_data.txt", 3, "empty_history"),
        ("user_data.txt", 4, "unknown_id"), ("user_data.txt", 6, "malformed_row"),
        ("outfit_data.txt", 2, "unknown_id"),
        ("item_data.txt", 4, "missing_image"), ("item_data.txt", 5, "unreadable_image"),
    }
    assert summary["skipped"] == {"no_target": 1}  # u5: o3's items have no usable image
    assert summary["counts"] == {"users": 2, "items": 5, "samples": 2, "train": 2, "valid": 0, "test": 0,
                                 "missing_images": 1, "unreadable_images": 1}


def test_titles_keep_their_commas_and_items_their_attributes(pog_raw, tmp_path):
    run("pog", pog_raw, tmp_path / "out", history_len=3, min_history=1, seed=7)
    got = items(tmp_path / "out")
    assert sorted(got, key=int) == ["101", "102", "103", "107", "108"]
    assert got["101"]["title"] == "Red, white and blue striped shirt, cotton"
    assert got["101"]["category"] == "c1"
    assert got["101"]["attributes"] == {"pic_url": "//img.example/101.jpg"}
    assert got["102"]["title"] == "Blue jeans"  # the first definition wins over the duplicate
    assert got["101"]["image"] == "images/101.jpg"
    assert (tmp_path / "out" / "images" / "101.jpg").read_bytes() == (pog_raw / "images" / "101.jpg").read_bytes()


def test_chinese_title_with_commas(tmp_path):
    raw = write_text(tmp_path / "raw", {
        "item_data.txt": "1,c,u,上衣\n2,c,u,红色 手提包, 夏季, 新款\n",
        "outfit_data.txt": "o,2\n", "user_data.txt": "x,1,o\n"})
    write_images(raw / "images", ["1", "2"])
    run("pog", raw, tmp_path / "out", min_history=1)
    assert items(tmp_path / "out")["2"]["title"] == "红色 手提包, 夏季, 新款"


def test_strict_mode_stops_at_the_first_defect(pog_raw, tmp_path):
    with pytest.raises(DataError, match=r"item_data\.txt:9: duplicate_id: item 102 already defined on line 2"):
        run("pog", pog_raw, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def many_users_raw(tmp_path):
    outfit = ";".join(str(i) for i in range(20, 30))
    users = "".join(f"user{n},{n % 10 + 1};{(n + 3) % 10 + 1},o1\n" for n in range(30))
    raw = write_text(tmp_path / "raw", {
        "item_data.txt": "".join(f"{i},c,u,item {i}\n" for i in range(1, 30)),
        "outfit_data.txt": f"o1,{outfit}\n", "user_data.txt": users})
    write_images(raw / "images", [str(i) for i in range(1, 30)])
    return raw


def test_same_seed_is_byte_identical_and_another_seed_changes_targets(tmp_path):
    raw = many_users_raw(tmp_path)
    run("pog", raw, tmp_path / "a", seed=1, min_history=1)
    run("pog", raw, tmp_path / "b", seed=1, min_history=1)
    run("pog", raw, tmp_path / "c", seed=2, min_history=1)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    targets_1 = [s[3] for s in samples(tmp_path / "a")]
    targets_2 = [s[3] for s in samples(tmp_path / "c")]
    assert len(targets_1) == 30 and targets_1 != targets_2


def test_targets_never_in_history_and_users_split_by_hash(tmp_path):
    raw = many_users_raw(tmp_path)
    summary, _ = run("pog", raw, tmp_path / "out", seed=3, min_history=1, valid_fraction=0.2, test_fraction=0.2)
    for sample_id, user, history, target, split in samples(tmp_path / "out"):
        assert target not in history
        assert split == hashed_split(user, 3, 0.2, 0.2)
    assert summary["counts"]["train"] + summary["counts"]["valid"] + summary["counts"]["test"] == 30
    assert min(summary["counts"]["valid"], summary["counts"]["test"]) > 0


def test_hashed_split_fractions_and_stability():
    splits = [hashed_split(f"user{n}", 42, 0.1, 0.1) for n in range(5000)]
    assert 0.08 < splits.count("test") / 5000 < 0.12 and 0.08 < splits.count("valid") / 5000 < 0.12
    assert hashed_split("user7", 42, 0.1, 0.1) == splits[7]  # a pure function of seed and id


def test_max_users_keeps_the_first_users(tmp_path):
    raw = many_users_raw(tmp_path)
    summary, _ = run("pog", raw, tmp_path / "out", min_history=1, max_users=4)
    assert [s[1] for s in samples(tmp_path / "out")] == ["user0", "user1", "user2", "user3"]


def test_images_from_an_official_style_pickle(pog_raw, tmp_path):
    """The official POG loader read ``image_data_*.pkl``: a list of (index, item_id, image) tuples."""
    import pickle

    import numpy as np

    good = ["101", "102", "103", "107", "108"]
    entries = [(n, item_id, np.full((4, 4, 3), n * 30, np.uint8)) for n, item_id in enumerate(good)]
    entries.append((9, "106", b"not an image"))
    with open(tmp_path / "image_data.pkl", "wb") as handle:
        pickle.dump(entries, handle)
    _, report = run("pog", pog_raw, tmp_path / "out", images=str(tmp_path / "image_data.pkl"), allow_pickle=True,
                    history_len=2, min_history=1, valid_fraction=0.0, test_fraction=0.0)
    assert samples(tmp_path / "out") == [("u1:0", "u1", ["108", "103"], "102", "train"),
                                         ("u2:0", "u2", ["108"], "101", "train")]
    assert ("item_data.txt", 6, "unreadable_image") in issues(report)
    # arrays are written as PNG; only the items that samples use are copied
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["101.png", "102.png", "103.png",
                                                                                "108.png"]
