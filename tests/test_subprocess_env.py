"""The processes the tests start run on the runtime stack only (tests/runtime_site/sitecustomize.py): the PyTorch
references of requirements-dev.txt are invisible there, as in a user's install, and visible in the test process."""
import importlib.util
import subprocess
import sys

from tests.subprocess_env import stage_env

PROBE = """
import importlib.util, transformers.utils
print(importlib.util.find_spec("torch") is None, importlib.util.find_spec("diffusers") is None,
      transformers.utils.is_torch_available())
try:
    import torch
except ModuleNotFoundError as exc:
    print("hidden:", exc.name)
import numpy, mindspore.common  # everything else imports as usual
"""


def _probe(env):
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_started_processes_do_not_see_the_pytorch_references():
    assert importlib.util.find_spec("torch") is not None  # the references the tests themselves use
    expected = ["True True False", "hidden: torch"]
    assert _probe(stage_env()) == expected
    assert _probe(None) == expected  # inherited environment: bash scripts/run_train.sh, msrun, check_ascend
