"""MovieLens readers (ml-latest-small and ml-100k): chronological samples, strictly earlier histories."""
import pickle

import numpy as np
import pytest
from PIL import Image

from research.pmg.data.movielens import split_title
from research.pmg.errors import DataError
from tests.data_fixtures import issues, items, run, samples, write_images, write_text

MOVIES_CSV = """\
movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,Heat (1995),Action|Crime|Thriller
4,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure|Drama|Fantasy|Mystery|Sci-Fi
5,Some Documentary (2001),(no genres listed)
6,Missing Poster (1999),Drama
7,Corrupt Poster (1999),Drama
8,Extra (2000),Comedy
3,Heat again (1995),Action
"""
LINKS_CSV = "movieId,imdbId,tmdbId\n1,0114709,862\n2,0112346,9087\n"
RATINGS_CSV = """\
userId,movieId,rating,timestamp
1,1,5.0,100
1,2,4.0,200
1,3,3.0,250
1,4,4.5,300
1,6,5.0,350
1,5,4.0,400
1,8,4.0,400
1,7,5.0,500
1,1,2.0,600
2,1,4.0,100
2,3,2.0,50
3,99,5.0,10
3,1,x,10
"""
# Without the two defective posters, user 1's positives in time order are 1@100, 2@200, 4@300, 5@400, 8@400.
EXPECTED = [
    ("1:0", "1", ["1"], "2", "train"),
    ("1:1", "1", ["1", "2"], "4", "train"),
    ("1:2", "1", ["2", "4"], "5", "valid"),
    ("1:3", "1", ["2", "4"], "8", "test"),  # 5 was rated in the same second: not earlier, not in the history
]


@pytest.fixture
def latest_raw(tmp_path):
    raw = write_text(tmp_path / "ml-latest-small",
                     {"movies.csv": MOVIES_CSV, "links.csv": LINKS_CSV, "ratings.csv": RATINGS_CSV})
    write_images(raw / "images", ["1", "2", "3", "4", "5", "8"], corrupt=["7"])
    return raw


def test_latest_small_fixture_gives_exactly_the_expected_samples(latest_raw, tmp_path):
    summary, report = run("movielens", latest_raw, tmp_path / "out", history_len=2, min_history=1)
    assert samples(tmp_path / "out") == EXPECTED
    assert issues(report) == {
        ("movies.csv", 10, "duplicate_id"), ("ratings.csv", 10, "duplicate_id"), ("ratings.csv", 13, "unknown_id"),
        ("ratings.csv", 14, "malformed_row"), ("movies.csv", 7, "missing_image"),
        ("movies.csv", 8, "unreadable_image"),
    }
    # user 1's first positive has no history; user 2 has a single positive interaction
    assert summary["skipped"] == {"short_history": 2}
    assert summary["source_format"] == "ml-latest-small"
    assert summary["counts"]["users"] == 1 and summary["counts"]["missing_images"] == 1


def test_default_history_of_three_needs_three_earlier_positives(latest_raw, tmp_path):
    run("movielens", latest_raw, tmp_path / "out")
    assert samples(tmp_path / "out") == [("1:0", "1", ["1", "2", "4"], "5", "train"),
                                         ("1:1", "1", ["1", "2", "4"], "8", "train")]


def test_titles_genres_and_links(latest_raw, tmp_path):
    run("movielens", latest_raw, tmp_path / "out", history_len=2, min_history=1)
    got = items(tmp_path / "out")
    assert list(got) == ["1", "2", "4", "5", "8"]
    assert got["2"]["title"] == "The American President"
    assert got["2"]["attributes"] == {"imdb_id": "0112346", "tmdb_id": "9087", "year": "1995"}
    assert got["4"]["title"] == "The City of Lost Children (Cité des enfants perdus, La)"
    assert got["4"]["genres"] == ["Adventure", "Drama", "Fantasy", "Mystery", "Sci-Fi"]
    assert got["5"]["genres"] == [] and got["5"]["attributes"] == {"year": "2001"}


@pytest.mark.parametrize("raw, expected", [
    ("Toy Story (1995)", ("Toy Story", "1995")),
    ("American President, The (1995)", ("The American President", "1995")),
    ("Misérables, Les (1995)", ("Les Misérables", "1995")),
    ("Borgen (2010–2013)", ("Borgen", "2010")),
    ("unknown", ("unknown", "")),
    ("Babylon 5", ("Babylon 5", "")),
])
def test_split_title(raw, expected):
    assert split_title(raw) == expected


def u_item_line(movie_id, title, genres):
    flags = ["0"] * 19
    for g in genres:
        flags[g] = "1"
    return f"{movie_id}|{title}|01-Jan-1995||http://us.imdb.com/x|{'|'.join(flags)}\n"


def test_ml_100k_fixture(tmp_path):
    u_item = (u_item_line(1, "Toy Story (1995)", [3, 4, 5])
              + u_item_line(2, "American President, The (1995)", [5, 8, 14])
              + u_item_line(4, "Cité des enfants perdus, La (1995)", [2, 8]) + u_item_line(5, "Doc (2001)", [7])
              + u_item_line(8, "Extra (2000)", [5]) + "9|Broken|row\n")
    u_data = "1\t1\t5\t100\n1\t2\t4\t200\n1\t4\t5\t300\n1\t5\t4\t400\n1\t8\t4\t400\n2\t1\t4\t100\n1\t77\t5\t1\n"
    raw = write_text(tmp_path / "ml-100k", {"u.item": u_item.encode("latin-1"), "u.data": u_data})
    write_images(raw / "images", ["1", "2", "4", "5", "8"])
    summary, report = run("movielens", raw, tmp_path / "out", history_len=2, min_history=1)
    assert samples(tmp_path / "out") == EXPECTED
    assert issues(report) == {("u.item", 6, "malformed_row"), ("u.data", 7, "unknown_id")}
    got = items(tmp_path / "out")
    assert got["4"]["title"] == "La Cité des enfants perdus"  # latin-1 decoded, article moved
    assert got["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert summary["source_format"] == "ml-100k"


def test_bundled_sample_both_formats_agree_and_histories_are_strictly_earlier(tmp_path):
    from research.pmg.scenarios import SAMPLE_ROOT

    run("movielens", SAMPLE_ROOT / "movielens", tmp_path / "latest")
    run("movielens", SAMPLE_ROOT / "movielens-100k", tmp_path / "100k")
    assert samples(tmp_path / "latest") == samples(tmp_path / "100k")
    times = {}
    for line in (SAMPLE_ROOT / "movielens" / "ratings.csv").read_text().splitlines()[1:]:
        user, movie, _, stamp = line.split(",")
        times[user, movie] = int(stamp)
    rows = samples(tmp_path / "latest")
    assert len(rows) > 20
    by_user = {}
    for _, user, history, target, split in rows:
        assert all(times[user, h] < times[user, target] for h in history)
        assert [times[user, h] for h in history] == sorted(times[user, h] for h in history)
        by_user.setdefault(user, []).append((times[user, target], split))
    for user, cases in by_user.items():  # leave-last-out in time order
        splits = [split for _, split in cases]
        assert [t for t, _ in cases] == sorted(t for t, _ in cases)
        held_out = ["valid", "test"] if len(cases) >= 3 else []
        assert splits == ["train"] * (len(cases) - len(held_out)) + held_out


def test_posters_from_a_pickle_need_allow_pickle(latest_raw, tmp_path):
    arrays = {str(m): np.full((8, 6, 3), 40 * m, np.uint8) for m in (1, 2, 4, 5)}
    arrays[8] = Image.new("RGB", (6, 8), (1, 2, 3))  # int key and a PIL image: both accepted
    with open(tmp_path / "image_data.pkl", "wb") as handle:
        pickle.dump(arrays, handle)
    with pytest.raises(DataError, match=r"image_data\.pkl: images are a pickle.*--allow-pickle"):
        run("movielens", latest_raw, tmp_path / "out", images=str(tmp_path / "image_data.pkl"))
    summary, report = run("movielens", latest_raw, tmp_path / "out", images=str(tmp_path / "image_data.pkl"),
                          allow_pickle=True, history_len=2, min_history=1)
    assert samples(tmp_path / "out")[0] == EXPECTED[0]
    assert (tmp_path / "out" / "images" / "1.png").is_file()
    with Image.open(tmp_path / "out" / "images" / "1.png") as img:
        assert img.size == (6, 8) and img.getpixel((0, 0)) == (40, 40, 40)


class Evil:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


def test_pickle_with_code_is_refused(latest_raw, tmp_path):
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"1": Evil()}, handle)
    with pytest.raises(DataError, match=r"refusing to load (posix|nt)\.system"):
        run("movielens", latest_raw, tmp_path / "out", images=str(tmp_path / "evil.pkl"), allow_pickle=True)


def test_folder_with_both_formats_is_refused(latest_raw, tmp_path):
    (latest_raw / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(DataError, match="holds both ratings.csv"):
        run("movielens", latest_raw, tmp_path / "out")


def test_wrong_header_is_fatal_even_when_lenient(latest_raw, tmp_path):
    (latest_raw / "ratings.csv").write_text("user,movie,rating,time\n1,1,5,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1: expected the header userId,movieId,rating,timestamp"):
        run("movielens", latest_raw, tmp_path / "out")
