"""The data stage: raw POG / MovieLens / sticker files -> canonical samples.

Run it with ``python -m research.pmg.data.prepare`` (function :func:`research.pmg.data.prepare.prepare`, not
re-exported here so that ``-m`` runs it cleanly). Later stages read a prepared folder with
research.pmg.records.samples.load_prepared and nothing else. This package never imports MindSpore.
"""
