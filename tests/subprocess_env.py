"""The environment of the processes the tests start: this checkout's packages, the venv's executables (msrun starts
its workers with the first python on PATH), and the runtime stack only (tests/runtime_site/sitecustomize.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME_SITE = Path(__file__).resolve().parent / "runtime_site"


def python_path(repo: Path = REPO) -> str:
    return os.pathsep.join([str(repo), str(RUNTIME_SITE)])


def stage_env(repo: Path = REPO, **extra: str) -> dict[str, str]:
    """``os.environ`` with PYTHONPATH and PATH set for a stage process, plus ``extra``."""
    return dict(os.environ, PYTHONPATH=python_path(repo), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                **extra)
