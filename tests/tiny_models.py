"""The one place tests get tiny models from: configs/tiny.yaml, built once per session."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from research.pmg.config import PMGConfig, load_config

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def tiny_config(output_dir: Path, *overrides: str) -> PMGConfig:
    """configs/tiny.yaml with outputs redirected to ``output_dir`` and any extra ``key=value`` overrides."""
    return load_config(TINY_CONFIG, [f"runtime.output_dir={output_dir}", *overrides])


def random_ids(rng: np.random.Generator, batch: int, length: int, vocab: int, pad_id: int = 0) -> np.ndarray:
    """Token ids in [pad_id + 1, vocab): no padding, so every position is attended to."""
    return rng.integers(pad_id + 1, vocab, size=(batch, length)).astype(np.int32)
