"""The scenarios PMG runs on, in one table: who reads the raw files, how long a history is, which prompts.

Adding a scenario is one reader module in research/pmg/data/, one prompt set in configs/prompts/, one entry
here and one config in configs/. Everything else (the config's ``scenario`` choices, the data stage's reader,
the keyword prompts, the negative prompt of generation, the bundled raw sample) is looked up here.

The reader is named as ``module:function`` rather than imported: it belongs to the data stage, and this
module is part of the floor that every stage imports, so it must not import a stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from research.pmg.errors import ConfigError

SAMPLE_ROOT = Path(__file__).resolve().parent / "assets" / "sample"  # bundled raw samples, one folder per scenario


@dataclass(frozen=True)
class Scenario:
    name: str
    reader: str  # "module:function" of the data stage: (raw, images, DataConfig, Report, progress) -> ReadResult
    history_len: int  # N most recent items per sample when data.history_len is 0
    prompts: str  # the keyword prompt set, configs/prompts/<prompts>.yaml
    negative_prompt: str  # generation's negative prompt when generate.negative_prompt is unset

    @property
    def raw_sample(self) -> Path:
        """The bundled raw sample in the scenario's official format (built by research.pmg.data.sample)."""
        return SAMPLE_ROOT / self.name


# History lengths are the official code's (POG 5, movies 3; stickers follow POG); negative prompts are the
# official demo's (prompts.py: costume, movie, emoticon).
SCENARIOS = {s.name: s for s in (
    Scenario("pog", "research.pmg.data.pog:read_pog", 5, "clothing", "human woman man body face fashion trendy"),
    Scenario("movielens", "research.pmg.data.movielens:read_movielens", 3, "movie", "broken text, unclear, twisted"),
    Scenario("stickers", "research.pmg.data.stickers:read_stickers", 5, "sticker",
             "Bad Artist, Worst Quality, Low Quality, Bad Hands-5, Low Resolution, Bad Anatomy, Bad Hands, Text, "
             "Watermark, Worst Quality, Low Quality, Blurry, Extra Limbs"),
)}
NAMES = tuple(SCENARIOS)  # the choices of the config's ``scenario`` field


def scenario(name: str) -> Scenario:
    """The registry entry of ``name``; a one-line :class:`ConfigError` for an unknown one."""
    if name not in SCENARIOS:
        raise ConfigError(f"scenario {name!r}: choose one of {list(NAMES)}")
    return SCENARIOS[name]
