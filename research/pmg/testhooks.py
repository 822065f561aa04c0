"""Test-only hold points, so a fault test can stop or kill a stage at an exact place (tests/test_faults.py).

With ``PMG_TEST_HOLD=<stage>:<point>`` in the environment, the process that first reaches that point creates the
file ``<PMG_TEST_HOLD_DIR>/<pid>`` (holding msrun's worker rank, if any) and waits there until the test removes the
file (or kills the process). Without the variable (always, outside tests) :func:`hold` returns at once.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

_done = False  # a process holds once


def hold(stage: str, point: str) -> None:
    """Wait at ``stage``'s ``point`` while the environment names it and the test has not released it."""
    global _done
    if _done or os.environ.get("PMG_TEST_HOLD") != f"{stage}:{point}":
        return
    _done = True
    marker = Path(os.environ["PMG_TEST_HOLD_DIR"]) / str(os.getpid())
    partial = marker.with_name(f".{marker.name}")
    partial.write_text(os.environ.get("MS_NODE_ID", ""))
    os.replace(partial, marker)  # whole or absent: the test reads it as soon as it appears
    while marker.exists():
        time.sleep(0.05)
