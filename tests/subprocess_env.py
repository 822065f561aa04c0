"""The environment of the processes the tests start: this checkout's packages, the venv's executables (msrun starts
its workers with the first python on PATH), and the runtime stack only (tests/runtime_site/sitecustomize.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.tiny_models import REPO

RUNTIME_SITE = Path(__file__).resolve().parent / "runtime_site"


def stage_env() -> dict[str, str]:
    """``os.environ`` with PYTHONPATH and PATH set for a stage process."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(RUNTIME_SITE)]),
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
