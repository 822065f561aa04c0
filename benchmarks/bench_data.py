"""Time the prepare stage on a MovieLens-100k-size input against the 60 s budget of the data-stage issue.

    python benchmarks/bench_data.py                      # real ml-100k if found (see below), else synthetic
    python benchmarks/bench_data.py --ml100k ~/data/ml-100k --keep /tmp/ml100k-prepared

The ratings come, in this order, from ``--ml100k DIR`` (GroupLens ``u.data``/``u.item``, or RecBole's atomic
``ml-100k.inter``/``ml-100k.item``); from an installed ``recbole`` distribution, whose wheel ships ml-100k
(``pip install --no-deps recbole==1.2.1`` is enough: its own dependencies, ray, tensorboard and an unpinned
torch, are not needed to read two text files, and the package is never imported here); otherwise they are
synthesised with ml-100k's statistics (943 users, 1682 movies, 100,000 ratings, its rating histogram,
at least 20 ratings per user, long-tailed popularity, same-second ties). MovieLens has no posters, so
1682 poster-sized JPEGs (185x278, like TMDB's w185) are always generated; building the input is not timed.

Prints the wall time of :func:`research.pmg.data.prepare.prepare` (median of ``--repeat`` runs), throughput
and the ratio to the budget. Everything is written under a temporary folder, nothing in the repository.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from research.pmg.config.data import DataConfig  # noqa: E402
from research.pmg.data.movielens import GENRES_100K  # noqa: E402
from research.pmg.data.prepare import prepare  # noqa: E402

BUDGET_S = 60.0
USERS, MOVIES, RATINGS, MAX_PER_USER = 943, 1682, 100_000, 737  # ml-100k's heaviest user rated 737 movies
RATING_SHARES = np.array([6110, 11370, 27145, 34174, 21201]) / 100_000  # ml-100k's histogram of 1..5 stars


def find_source(explicit: str | None) -> tuple[str, Path | None]:
    if explicit:
        return "given", Path(explicit)
    spec = importlib.util.find_spec("recbole")
    if spec and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file():
            return "recbole", folder
    return "synthetic", None


def write_input(raw: Path, source: Path | None, seed: int) -> None:
    raw.mkdir(parents=True)
    if source is None:
        _synthesise(raw, np.random.default_rng(seed))
    elif (source / "u.data").is_file():
        for name in ("u.data", "u.item"):
            (raw / name).write_bytes((source / name).read_bytes())
    elif (source / "ml-100k.inter").is_file():
        _from_recbole(source, raw)
    else:
        sys.exit(f"error: {source}: no u.data/u.item or ml-100k.inter/ml-100k.item")
    movie_ids = [line.split("|", 1)[0] for line in (raw / "u.item").read_text(encoding="latin-1").splitlines()]
    _posters(raw / "images", movie_ids, np.random.default_rng(seed))


def _synthesise(raw: Path, rng: np.random.Generator) -> None:
    weight = rng.lognormal(0.0, 1.0, USERS)
    per_user = 20 + rng.multinomial(RATINGS - 20 * USERS, weight / weight.sum())
    while per_user.max() > MAX_PER_USER:  # move the excess of the heaviest raters to the others
        excess = (per_user - MAX_PER_USER).clip(min=0).sum()
        per_user = per_user.clip(max=MAX_PER_USER)
        room = weight * (per_user < MAX_PER_USER)
        per_user += rng.multinomial(excess, room / room.sum())
    popularity = 1.0 / np.arange(1, MOVIES + 1) ** 0.9
    popularity /= popularity.sum()
    rows = []
    for user, count in enumerate(per_user, start=1):
        movies = rng.choice(MOVIES, size=count, replace=False, p=popularity) + 1
        stars = rng.choice(5, size=count, p=RATING_SHARES) + 1
        start = rng.integers(874_724_710, 892_000_000)
        stamps = start + np.sort(rng.integers(0, 1_286_000, count)) // 20 * 20  # coarse: some ties
        rows += [f"{user}\t{m}\t{s}\t{t}\n" for m, s, t in zip(movies, stars, stamps)]
    (raw / "u.data").write_text("".join(rows))
    lines = []
    for movie in range(1, MOVIES + 1):
        flags = ["0"] * len(GENRES_100K)
        for g in rng.choice(np.arange(1, len(GENRES_100K)), size=rng.integers(1, 4), replace=False):
            flags[g] = "1"
        year = rng.integers(1930, 1999)
        lines.append(f"{movie}|Movie {movie} ({year})|01-Jan-{year}||http://example.org/{movie}|{'|'.join(flags)}\n")
    (raw / "u.item").write_bytes("".join(lines).encode("latin-1"))


def _from_recbole(folder: Path, raw: Path) -> None:
    """RecBole's atomic files (tab-separated, typed header) back into GroupLens' u.data / u.item layout."""
    inter = (folder / "ml-100k.inter").read_text(encoding="utf-8").splitlines()[1:]
    (raw / "u.data").write_text("".join(line + "\n" for line in inter))
    lines = []
    for line in (folder / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]:
        movie, title, year, classes = (line.split("\t") + [""] * 4)[:4]
        genres = set(classes.split())
        flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
        lines.append(f"{movie}|{title} ({year})|01-Jan-{year}|||{flags}\n" if year else f"{movie}|{title}||||{flags}\n")
    (raw / "u.item").write_bytes("".join(lines).encode("latin-1", errors="replace"))


def _posters(folder: Path, movie_ids: list[str], rng: np.random.Generator) -> None:
    folder.mkdir()
    base = rng.integers(0, 255, (278 // 8, 185 // 8, 3), dtype=np.uint8)
    for movie_id in movie_ids:
        tint = rng.integers(0, 255, 3, dtype=np.uint8)
        img = Image.fromarray(base ^ tint).resize((185, 278), Image.BILINEAR)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85)
        (folder / f"{movie_id}.jpg").write_bytes(buffer.getvalue())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ml100k", help="folder with u.data/u.item (or RecBole's ml-100k.inter/.item)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--keep", help="also write the prepared dataset of the last run here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    kind, source = find_source(args.ml100k)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        raw = Path(tmp) / "ml-100k"
        started = time.perf_counter()
        write_input(raw, source, args.seed)
        n_ratings = sum(1 for _ in open(raw / "u.data"))
        print(f"input: {kind} ml-100k ({n_ratings} ratings, {len(list((raw / 'images').iterdir()))} posters), "
              f"built in {time.perf_counter() - started:.1f} s (not timed)")
        times = []
        for run in range(args.repeat):
            out = Path(args.keep) if args.keep and run == args.repeat - 1 else Path(tmp) / f"out{run}"
            started = time.perf_counter()
            summary, _ = prepare("movielens", DataConfig(raw=str(raw), out=str(out)), progress=False)
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    counts = summary["counts"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"prepare movielens: median {median:.2f} s over {len(times)} runs "
          f"({', '.join(f'{t:.2f}' for t in times)}); peak RSS {rss_mb:.0f} MB")
    print(f"  {counts['samples']} samples from {counts['users']} users, {counts['items']} items copied; "
          f"{n_ratings / median:,.0f} ratings/s, {counts['samples'] / median:,.0f} samples/s")
    verdict = "within" if median < BUDGET_S else "OVER"
    print(f"  ratio to the {BUDGET_S:.0f} s budget: {median / BUDGET_S:.3f} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
