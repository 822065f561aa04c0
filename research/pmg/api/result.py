"""What :meth:`research.pmg.api.PMG.personalize` returns, and how it is written to a folder.

``Personalized.save(folder)`` writes::

    candidates/<k>_<m>.png   candidate m of weight set k (as the split-wide generation names them)
    chosen.png               the candidate CLIP chose
    sheet.png                history | target | candidates (the chosen one framed) | chosen
    result.json              keywords, every candidate's weights, seed, d_p, d_t, z, and which was chosen

Each file is written whole or not at all (atomic rename).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from research.pmg.files import write_atomic
from research.pmg.records.samples import Item

CANDIDATES_DIR, CHOSEN_FILE, SHEET_FILE, RESULT_FILE = "candidates", "chosen.png", "sheet.png", "result.json"


@dataclass(frozen=True)
class Candidate:
    """One generated image with its CLIP scores (paper section 3.3)."""

    k: int  # weight set
    m: int  # image of that weight set
    weights: tuple[float, float]  # (w_p, w_t)
    seed: tuple[int, ...]  # what its initial noise was drawn from
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8
    d_p: float  # cos(image, preference keywords)
    d_t: float  # cos(image, target keywords)
    z: float  # the balance score; the highest wins
    chosen: bool

    @property
    def name(self) -> str:
        return f"{CANDIDATES_DIR}/{self.k}_{self.m}.png"


@dataclass
class Personalized:
    """One request's answer: the keywords, every candidate and the chosen image.

    ``method`` is ``pmg`` (preference keywords and, when trained, the soft preference) or ``no_personalization``
    (target keywords alone, ranked by d_t). ``sample`` is the prepared sample's id when the request is one
    (``prepared``: its images are then those of the split-wide generation), else ``request-<hash of its content>``.
    """

    method: str
    sample: str
    prepared: bool
    history: list[Item]
    history_images: list[Path]
    target: Item
    target_image: Path
    conversation: tuple[str, ...]
    preference_keywords: tuple[str, ...]
    target_keywords: tuple[str, ...]
    soft: bool  # conditioned on the trained soft preference E_m
    candidates: list[Candidate]
    chosen: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> np.ndarray:
        """The chosen image ``(H, W, 3)`` uint8."""
        return self.candidates[self.chosen].image

    def to_json(self) -> dict[str, Any]:
        """Everything but the pixels (images are named as :meth:`save` writes them)."""
        return {"method": self.method, "sample": self.sample, "prepared": self.prepared,
                "history": [{"id": item.id, "title": item.title, "image": str(path)}
                            for item, path in zip(self.history, self.history_images)],
                "target": {"id": self.target.id, "title": self.target.title, "image": str(self.target_image)},
                "conversation": list(self.conversation),
                "preference_keywords": list(self.preference_keywords),
                "target_keywords": list(self.target_keywords), "soft": self.soft, "chosen": self.chosen,
                "image": self.candidates[self.chosen].name,
                "candidates": [{"k": c.k, "m": c.m, "weights": list(c.weights), "seed": list(c.seed),
                                "image": c.name, "d_p": c.d_p, "d_t": c.d_t, "z": c.z, "chosen": c.chosen}
                               for c in self.candidates],
                "settings": self.settings}

    def sheet(self):
        """The contact sheet as a PIL image: history | target | candidates (chosen framed) | chosen."""
        from research.pmg.generate.outputs import contact_sheet
        from research.pmg.images import load_rgb

        labels = [f"w={c.weights[0]:g},{c.weights[1]:g} z={c.z:.3f}" for c in self.candidates]
        return contact_sheet([load_rgb(p) for p in self.history_images],
                             np.stack([c.image for c in self.candidates]), self.chosen, labels,
                             target=load_rgb(self.target_image))

    def save(self, folder: str | Path) -> Path:
        """Write the images, the contact sheet and ``result.json`` into ``folder``; return the JSON's path."""
        from research.pmg.generate.outputs import save_png

        folder = Path(folder)
        for candidate in self.candidates:
            save_png(folder / candidate.name, candidate.image)
        save_png(folder / CHOSEN_FILE, self.image)
        save_png(folder / SHEET_FILE, self.sheet())
        path = folder / RESULT_FILE
        write_atomic(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        return path
