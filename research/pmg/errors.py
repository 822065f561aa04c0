"""The base class of errors caused by the user's input (files, configs, checkpoints, data).

Entry points print these as one line naming the problem and exit with code 2; anything else is a bug
and keeps its traceback.
"""


class PMGError(Exception):
    """Bad input: a missing file, a malformed row, a config or checkpoint that does not fit."""
