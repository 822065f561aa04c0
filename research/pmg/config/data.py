"""Settings of the data stage: where the raw files are, how samples are cut, and how strict to be.

The ``data:`` section of :class:`research.pmg.config.PMGConfig`. The scenario itself is the top-level
``scenario`` field there (research/pmg/scenarios.py), so it is an argument of
:func:`research.pmg.data.prepare.prepare`, not a field here. Defaults live here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from research.pmg.config.checks import check, check_finite
from research.pmg.scenarios import scenario as scenario_entry

MAX_HISTORY = 1000  # history items per sample: each becomes prompt text and an image to load


@dataclass
class DataConfig:
    """How raw POG / MovieLens / sticker files become canonical samples.

    Empty paths have defaults: ``raw`` is the bundled sample of the scenario, ``images`` is ``<raw>/images``,
    ``out`` is ``<runtime.output_dir>/data``.
    """

    raw: str = ""  # folder with the scenario's raw files, in their official format
    images: str = ""  # folder of <item id>.jpg|.jpeg|.png|.webp, or a .pkl of arrays (needs allow_pickle)
    allow_pickle: bool = False  # a pickle can carry code: read one only when asked to (and then restricted)
    out: str = ""  # the prepared dataset folder (items.jsonl, samples.jsonl, images/, summary.json)
    history_len: int = 0  # N most recent history items per sample; 0 = scenario default: POG 5, MovieLens 3, stickers 5
    min_history: int = 0  # samples with a shorter history are skipped; 0 = history_len (full histories only)
    min_rating: float = 4.0  # MovieLens: ratings >= this are positive interactions
    valid_fraction: float = 0.1  # POG (no timestamps): share of users whose samples go to "valid"
    test_fraction: float = 0.1  # POG: share of users whose samples go to "test"
    max_users: int = 0  # keep the first N users in raw-file order; 0 = all
    seed: int = 42  # POG target choice and POG user split; fixed seed -> byte-identical output
    strict: bool = False  # stop at the first bad row / id / image instead of skipping and counting it

    def validate(self, where: str) -> None:
        check_finite(self, where)  # values set in code bypass the loader's check
        check(self.history_len >= 0, where, "history_len", "must be >= 0 (0 = the scenario's default)")
        check(self.history_len <= MAX_HISTORY, where, "history_len", f"must be <= {MAX_HISTORY}")
        check(self.min_history >= 0, where, "min_history", "must be >= 0 (0 = history_len)")
        check(self.min_history <= MAX_HISTORY, where, "min_history", f"must be <= {MAX_HISTORY}")
        if self.history_len and self.min_history:
            check(self.min_history <= self.history_len, where, "min_history", "must not exceed history_len")
        check(self.min_rating > 0, where, "min_rating", "must be > 0")
        check(0 <= self.valid_fraction < 1, where, "valid_fraction", "must be in [0, 1)")
        check(0 <= self.test_fraction < 1, where, "test_fraction", "must be in [0, 1)")
        check(self.valid_fraction + self.test_fraction < 1, where, "test_fraction",
               "valid_fraction + test_fraction must be < 1 (some users must train)")
        check(self.max_users >= 0, where, "max_users", "must be >= 0 (0 = all)")
        check(0 <= self.seed < 2 ** 32, where, "seed", "must be in [0, 2**32)")

    def resolved_history_len(self, scenario: str) -> int:
        return self.history_len or scenario_entry(scenario).history_len

    def resolved_min_history(self, scenario: str) -> int:
        return self.min_history or self.resolved_history_len(scenario)


