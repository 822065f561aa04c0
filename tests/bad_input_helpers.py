"""What every bad-input test asserts about a command that was given bad input, in one place."""
from __future__ import annotations

import subprocess

from research.pmg.errors import MAX_MESSAGE_CHARS

MAX_OUTPUT = 20_000  # characters per stream: an error line is at most ~500, MindSpore may warn a few lines first


def assert_one_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit code 2, no traceback, exactly one bounded ``error:`` line and it is the last line on stderr, bounded
    output: returns that line."""
    output = proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    assert len(errors[0]) <= len("error: ") + MAX_MESSAGE_CHARS, errors[0][:1000]
    assert len(proc.stderr) < MAX_OUTPUT and len(proc.stdout) < MAX_OUTPUT, output[:3000]
    return errors[0]
