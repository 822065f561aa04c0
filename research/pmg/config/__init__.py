"""Typed, validated configuration for every PMG stage: one module per section, defaults in each and nowhere else.

A YAML file maps onto :class:`PMGConfig` (``pmg.py``), whose sections are ``runtime.py``, ``data.py``,
``models.py``, ``keywords.py``, ``train.py``, ``generate.py`` and ``evaluate.py``; ``loader.py`` reads and
checks the file, ``checks.py`` holds the field checks the sections share. Import from here.
"""
from research.pmg.config.checks import INT64, SEED_LIMIT, check, check_finite, check_range
from research.pmg.config.data import DataConfig
from research.pmg.config.evaluate import EvaluateConfig
from research.pmg.config.generate import GenerateConfig
from research.pmg.config.keywords import KeywordsConfig
from research.pmg.config.loader import (MAX_BASE_CHAIN, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_VALUES, dump_config,
                                        load_config, load_dataclass_config)
from research.pmg.config.models import (ClipConfig, DiffusionConfig, LlamaConfig, ModelsConfig, SchedulerConfig,
                                        SoftPreferenceConfig)
from research.pmg.config.pmg import PMGConfig
from research.pmg.config.runtime import RuntimeConfig
from research.pmg.config.train import TrainConfig
from research.pmg.errors import ConfigError

__all__ = ["INT64", "SEED_LIMIT", "MAX_BASE_CHAIN", "MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_VALUES", "ClipConfig",
           "ConfigError", "DataConfig", "DiffusionConfig", "EvaluateConfig", "GenerateConfig", "KeywordsConfig",
           "LlamaConfig", "ModelsConfig", "PMGConfig", "RuntimeConfig", "SchedulerConfig", "SoftPreferenceConfig",
           "TrainConfig", "check", "check_finite", "check_range", "dump_config", "load_config",
           "load_dataclass_config"]
