"""The data stage: raw POG / MovieLens / sticker files -> canonical samples.

Run it with ``python -m research.pmg.data.prepare`` (function :func:`research.pmg.data.prepare.prepare`, not
re-exported here so that ``-m`` runs it cleanly). Later stages read a prepared folder with
:func:`load_prepared` and nothing else. This package never imports MindSpore.
"""
from research.pmg.data.config import DataConfig
from research.pmg.data.records import SPLITS, Item, PreparedData, Sample, load_prepared
from research.pmg.data.report import DataError

__all__ = ["DataConfig", "DataError", "Item", "PreparedData", "SPLITS", "Sample", "load_prepared"]
