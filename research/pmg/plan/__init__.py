"""Memory and time plan per NPU for a config: will training, keyword extraction and generation fit, and how long.

``python -m research.pmg.plan --config CONFIG [--nproc N]`` prints it. Everything is counted from the config
and the model folders' ``config.json`` files (no framework is imported, nothing is built): parameters and
activations in :mod:`~research.pmg.plan.llama` (closed form) and :mod:`~research.pmg.plan.unet` /
:mod:`~research.pmg.plan.clip` (layer walks), assembled per job in :mod:`~research.pmg.plan.jobs` and written by
:mod:`~research.pmg.plan.report`.
"""
from research.pmg.plan.jobs import CHIPS, Assumptions, Plan, make_plan
from research.pmg.plan.report import to_json, to_markdown

__all__ = ["CHIPS", "Assumptions", "Plan", "make_plan", "to_json", "to_markdown"]
