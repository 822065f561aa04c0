"""The base class of errors caused by the user's input (files, configs, checkpoints, data), and their wording.

Entry points print these as one line naming the problem and exit with code 2; anything else is a bug
and keeps its traceback. Input can be hostile (a 300-byte YAML file can expand to millions of values), so
every value quoted in a message goes through :func:`short_repr` and every printed line through
:func:`error_line`, both bounded.
"""
from __future__ import annotations

import reprlib

MAX_MESSAGE_CHARS = 500  # an error line a terminal shows whole; the rest is cut with an ellipsis
MAX_VALUE_CHARS = 80  # a value quoted inside a message

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 2, 4, 6, 6, 6
_REPR.maxstring, _REPR.maxother = 60, 60


class PMGError(Exception):
    """Bad input: a missing file, a malformed row, a config or checkpoint that does not fit."""


def short_repr(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, however large or deeply shared the value is."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        # repr of an int past 4300 digits raises (sys.int_info.str_digits_check_threshold), and is unreadable anyway
        return f"<integer of {value.bit_length()} bits>"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return clip(" ".join(text.split()), limit)


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` when it fits in ``limit`` characters, else its start and an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def describe(exc: BaseException) -> str:
    """What went wrong, for a user: an OSError as ``<file>: <reason>``, anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
        return ": ".join([" -> ".join(files), exc.strerror] if files else [exc.strerror])
    return str(exc)


def error_line(exc: BaseException | str) -> str:
    """``error: <message>`` on one bounded line, whatever the exception text held (newlines, YAML snippets)."""
    text = exc if isinstance(exc, str) else describe(exc)
    return "error: " + clip(" ".join(text[:16 * MAX_MESSAGE_CHARS].split()))


class ConfigError(PMGError, ValueError):
    """A configuration file or override is invalid; the message names the source and the field.

    The message is one line of bounded length, whatever the file held.
    """

    def __init__(self, message: str):
        super().__init__(clip(" ".join(message[:4 * MAX_MESSAGE_CHARS].split())))


class DataError(PMGError, ValueError):
    """Unusable input data. The message starts with ``file:line:`` (or ``file:``) and fits on one line."""


class NonFiniteLoss(PMGError, RuntimeError):
    """A training loss became NaN/Inf (research/pmg/loop.py); the message names the step and the last good
    checkpoint."""
