"""MovieLens (GroupLens releases, unchanged) plus a folder of posters -> canonical samples.

Two release formats, recognised by their files in ``<raw>``:

- ``ml-latest-small`` (also ml-latest / ml-25m / ml-32m): UTF-8 CSV with a header line.
  ``ratings.csv`` ``userId,movieId,rating,timestamp``; ``movies.csv`` ``movieId,title,genres`` with quoted
  titles containing commas (``"American President, The (1995)"``) and ``|``-joined genres; ``links.csv``
  ``movieId,imdbId,tmdbId`` (optional; kept as item attributes, handy for finding posters).
- ``ml-100k``: ``u.data`` tab-separated ``user item rating timestamp``; ``u.item`` ``|``-separated latin-1,
  ``id|title|release date|video release date|IMDb URL|`` and 19 genre flags in the order of :data:`GENRES_100K`.

Posters are not part of MovieLens: ``<images>/<movieId>.jpg`` (or .jpeg/.png/.webp), or with
``allow_pickle`` a pickle ``{movieId: array}`` like the official code's ``image_data.pkl``.

Positive interactions are ratings >= ``min_rating`` (4) whose movie has a usable poster. Each positive is a
target; its history is the N (3) most recent positives strictly earlier in time, and each user's samples are
split leave-last-out in time order (:mod:`research.pmg.data.sampling`). The official code instead made one
sample per user from positives sorted by rating, then time — not chronological — which can put later movies
into the history. Titles lose their year (kept as an attribute) and get a trailing article moved to the
front: ``American President, The (1995)`` -> ``The American President``.
"""
from __future__ import annotations

import re
from pathlib import Path

from research.pmg.config.data import DataConfig
from research.pmg.data.images import open_images, verify_images
from research.pmg.data.lines import read_lines, split_csv
from research.pmg.data.report import Report, fatal
from research.pmg.data.sampling import Event, ReadResult, chronological_samples
from research.pmg.records.samples import ID_PATTERN, Item

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")
_YEAR = re.compile(r"(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*")
_ARTICLE = re.compile(r"(?P<main>.+), (?P<article>The|A|An|Les|La|Le|Il|El|Das|Die|Der)")


def read_movielens(raw: Path, images: Path, cfg: DataConfig, report: Report, progress: bool) -> ReadResult:
    latest, old = (raw / "ratings.csv").is_file(), (raw / "u.data").is_file()
    if latest and old:
        raise fatal(str(raw), 0, "holds both ratings.csv (ml-latest-small) and u.data (ml-100k); use one folder each")
    if not latest and not old:
        raise fatal(str(raw), 0, "no ratings.csv (ml-latest-small format) or u.data (ml-100k format) found")
    if latest:
        source_format, movies = "ml-latest-small", _read_movies_csv(raw, report, progress)
        ratings = _read_ratings_csv(raw / "ratings.csv", movies, report, progress)
    else:
        source_format, movies = "ml-100k", _read_u_item(raw / "u.item", report, progress)
        ratings = _read_u_data(raw / "u.data", movies, report, progress)

    positives: dict[str, list[tuple[float, int, str]]] = {}  # user -> (time, line, movie)
    seen: dict[str, dict[str, int]] = {}  # user -> movie -> line of its first rating
    ratings_file = str(raw / ("ratings.csv" if latest else "u.data"))
    for number, user_id, movie_id, rating, timestamp in ratings:
        first = seen.setdefault(user_id, {})
        if movie_id in first:
            report.issue(ratings_file, number, "duplicate_id",
                         f"user {user_id} rated movie {movie_id} again (first on line {first[movie_id]}); "
                         "keeping the first rating")
            continue
        first[movie_id] = number
        if cfg.max_users and user_id not in positives and len(positives) >= cfg.max_users:
            continue
        events = positives.setdefault(user_id, [])
        if rating >= cfg.min_rating:
            events.append((timestamp, number, movie_id))

    wanted = {m for events in positives.values() for _, _, m in events}
    movie_file = str(raw / ("movies.csv" if latest else "u.item"))
    usable = verify_images(open_images(images, cfg.allow_pickle),
                           {m: (movie_file, movies[m][0]) for m in wanted}, report, progress)

    history_len, min_history = cfg.resolved_history_len("movielens"), cfg.resolved_min_history("movielens")
    samples = []
    for user_id, events in positives.items():
        samples += chronological_samples(
            user_id, [Event(time=t, order=n, item=m) for t, n, m in events if m in usable],
            history_len, min_history, report)
    used = sorted({i for s in samples for i in (*s.history, s.target)})
    items = {m: movies[m][1] for m in used}
    return ReadResult(source_format=source_format, items=items, images={m: usable[m] for m in used},
                      samples=samples)


def split_title(raw_title: str) -> tuple[str, str]:
    """``"American President, The (1995)"`` -> ``("The American President", "1995")``; year "" if absent."""
    title, year = raw_title.strip(), ""
    match = _YEAR.fullmatch(title)
    if match:
        title, year = match["title"], match["year"]
    main, paren, rest = title.partition(" (")
    article = _ARTICLE.fullmatch(main)
    if article:
        title = f"{article['article']} {article['main']}{paren}{rest}"
    return title, year


def _header(path: Path, report: Report, expected: list[str], progress: bool):
    lines = read_lines(path, report, progress=progress)
    first = next(lines, None)
    if first is None or [f.strip() for f in split_csv(first[1])] != expected:
        found = first[1] if first else "an empty file"
        raise fatal(str(path), first[0] if first else 0, f"expected the header {','.join(expected)}, found {found!r}")
    return lines


def _read_movies_csv(raw: Path, report: Report, progress: bool) -> dict[str, tuple[int, Item]]:
    path = raw / "movies.csv"
    links = _read_links_csv(raw / "links.csv", report, progress) if (raw / "links.csv").is_file() else {}
    movies: dict[str, tuple[int, Item]] = {}
    for number, text in _header(path, report, ["movieId", "title", "genres"], progress):
        fields = split_csv(text)
        if len(fields) != 3:
            report.issue(str(path), number, "malformed_row",
                         f"expected movieId,title,genres (3 fields), got {len(fields)}")
            continue
        movie_id, raw_title, genres = (f.strip() for f in fields)
        if not _valid_new_id(movie_id, movies, path, number, report):
            continue
        title, year = split_title(raw_title)
        genre_list = tuple(g for g in genres.split("|") if g and g != "(no genres listed)")
        attributes = {"year": year, **links.get(movie_id, {})}
        movies[movie_id] = (number, Item(id=movie_id, title=title, genres=genre_list,
                                         attributes={k: v for k, v in attributes.items() if v}))
    return movies


def _read_links_csv(path: Path, report: Report, progress: bool) -> dict[str, dict[str, str]]:
    links = {}
    for number, text in _header(path, report, ["movieId", "imdbId", "tmdbId"], progress):
        fields = [f.strip() for f in split_csv(text)]
        if len(fields) != 3:
            report.issue(str(path), number, "malformed_row",
                         f"expected movieId,imdbId,tmdbId (3 fields), got {len(fields)}")
            continue
        links[fields[0]] = {"imdb_id": fields[1], "tmdb_id": fields[2]}
    return links


def _read_ratings_csv(path: Path, movies: dict, report: Report, progress: bool):
    for number, text in _header(path, report, ["userId", "movieId", "rating", "timestamp"], progress):
        row = _rating(text.split(","), path, number, movies, report)
        if row:
            yield (number, *row)


def _read_u_item(path: Path, report: Report, progress: bool) -> dict[str, tuple[int, Item]]:
    movies: dict[str, tuple[int, Item]] = {}
    for number, text in read_lines(path, report, encoding="latin-1", progress=progress):
        fields = text.split("|")
        if len(fields) != 5 + len(GENRES_100K) or any(f not in ("0", "1") for f in fields[5:]):
            report.issue(str(path), number, "malformed_row",
                         f"expected id|title|release date|video release date|IMDb URL| and {len(GENRES_100K)} "
                         f"genre flags 0/1 ({5 + len(GENRES_100K)} fields), got {len(fields)} fields")
            continue
        movie_id, raw_title, release, _, imdb_url = (f.strip() for f in fields[:5])
        if not _valid_new_id(movie_id, movies, path, number, report):
            continue
        title, year = split_title(raw_title)
        if not year and re.fullmatch(r"\d{2}-\w{3}-\d{4}", release):
            year = release[-4:]
        genres = tuple(g for g, flag in zip(GENRES_100K, fields[5:]) if flag == "1" and g != "unknown")
        attributes = {"year": year, "release_date": release, "imdb_url": imdb_url}
        movies[movie_id] = (number, Item(id=movie_id, title=title, genres=genres,
                                         attributes={k: v for k, v in attributes.items() if v}))
    return movies


def _read_u_data(path: Path, movies: dict, report: Report, progress: bool):
    for number, text in read_lines(path, report, progress=progress):
        row = _rating(text.split("\t"), path, number, movies, report)
        if row:
            yield (number, *row)


def _rating(fields: list[str], path: Path, number: int, movies: dict, report: Report):
    """``(user, movie, rating, timestamp)`` of one ratings row, or None after reporting why it is unusable."""
    if len(fields) != 4:
        report.issue(str(path), number, "malformed_row", f"expected user, movie, rating, timestamp (4 fields), "
                                                         f"got {len(fields)}")
        return None
    user_id, movie_id, rating, timestamp = (f.strip() for f in fields)
    try:
        value, time = float(rating), int(timestamp)
    except ValueError:
        report.issue(str(path), number, "malformed_row",
                     f"rating {rating!r} or timestamp {timestamp!r} is not a number")
        return None
    if not user_id or value != value:
        report.issue(str(path), number, "malformed_row", "empty user id or NaN rating")
        return None
    if movie_id not in movies:
        report.issue(str(path), number, "unknown_id", f"movie {movie_id!r} is not in the movie list")
        return None
    return user_id, movie_id, value, time


def _valid_new_id(movie_id: str, movies: dict, path: Path, number: int, report: Report) -> bool:
    if not ID_PATTERN.fullmatch(movie_id):
        report.issue(str(path), number, "malformed_row", f"bad movie id {movie_id!r}")
        return False
    if movie_id in movies:
        report.issue(str(path), number, "duplicate_id",
                     f"movie {movie_id} already defined on line {movies[movie_id][0]}; keeping that one")
        return False
    return True
