"""Processes the tests start (stages, pipelines, msrun workers, check_ascend) see the runtime stack only.

The test environment also holds the PyTorch references (requirements-dev.txt: torch, diffusers, lpips), which a
user's install (requirements.txt) does not. Hidden here, a stage that imported one of them by mistake fails its
test instead of passing only where the references happen to be installed; and the stage processes skip importing
torch, which MindFormers' TensorBoard writer and Hugging Face transformers do whenever it is installed (the stage
imports took 10.2-11.1 s with torch visible, 7.1 s without).

Python imports this module at start-up because the tests put this folder on PYTHONPATH of the processes they start
(tests/subprocess_env.py); the pytest process itself keeps the references.
"""
import sys
from importlib.machinery import PathFinder

HIDDEN = frozenset({"torch", "torchvision", "diffusers", "lpips"})


class _RuntimeOnlyFinder(PathFinder):
    """The path finder, blind to the hidden packages: ``import torch`` raises ModuleNotFoundError and
    ``importlib.util.find_spec("torch")`` is None, as where torch is not installed."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN:
            return None
        return super().find_spec(fullname, path, target)


sys.meta_path[:] = [_RuntimeOnlyFinder if finder is PathFinder else finder for finder in sys.meta_path]
