"""Test-wide set-up: one CPU runtime per session, a fixture that runs a test in both modes, and the module order
that lets ``pytest -n 2 --dist loadfile`` (pytest-xdist) keep both cores busy to the end."""
from pathlib import Path

import pytest

from research.pmg.config import RuntimeConfig
from research.pmg.runtime import set_execution_mode, setup_runtime

# The modules that take longest (pytest --durations on 2 cores), started first so that neither worker is left
# with a long module at the end. Every other module follows in its usual order.
LONGEST_FIRST = ("test_mini_pmg", "test_faults", "test_evaluate_methods", "test_train", "test_pipeline",
                 "test_bad_inputs_outputs", "test_demo", "test_mini_images", "test_selftest", "test_mini_llm",
                 "test_keywords", "test_bad_inputs_config")


def pytest_collection_modifyitems(config, items):
    """The longest modules first: ``--dist loadfile --no-loadscope-reorder`` hands out whole modules in this
    order (a module's fixtures are made once, in one worker)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))  # stable within a module


@pytest.fixture(scope="session", autouse=True)
def runtime(tmp_path_factory):
    """The CPU runtime the whole suite runs on (logs and caches under a temporary folder). Set up before any
    test, whatever the order: MindSpore refuses a device choice once a kernel has run in the process."""
    out = tmp_path_factory.mktemp("pmg-output")
    return setup_runtime(RuntimeConfig(device="CPU", mode="graph", seed=0, output_dir=str(out)))


@pytest.fixture(params=["pynative", "graph"])
def mode(request, runtime):
    """Run the test once in PyNative and once in graph mode; restore graph mode afterwards."""
    set_execution_mode(request.param)
    yield request.param
    set_execution_mode("graph")


@pytest.fixture(scope="session")
def tiny_cfg(runtime):
    """configs/tiny.yaml, writing into the session's temporary output folder."""
    from tests.tiny_models import tiny_config

    return tiny_config(runtime.output_dir)


@pytest.fixture(scope="session")
def tiny_tokenizers(tiny_cfg, runtime):
    from research.pmg.models import resolve_tokenizers

    return resolve_tokenizers(tiny_cfg, runtime)


@pytest.fixture(scope="session")
def tiny_diffusion(tiny_cfg, runtime, tiny_tokenizers):
    from research.pmg.models import build_diffusion_parts
    from research.pmg.runtime import seed_everything

    seed_everything(tiny_cfg.runtime.seed)  # random-init weights: the same whichever test builds them first
    return build_diffusion_parts(tiny_cfg, runtime, tiny_tokenizers)


@pytest.fixture(scope="session")
def tiny_clip(tiny_cfg, runtime, tiny_tokenizers):
    from research.pmg.models import build_clip_parts
    from research.pmg.runtime import seed_everything

    seed_everything(tiny_cfg.runtime.seed)  # random-init weights: the same whichever test builds them first
    return build_clip_parts(tiny_cfg, runtime, tiny_tokenizers)


@pytest.fixture(scope="session")
def pipeline_reference(tmp_path_factory):
    """The uninterrupted run of the fast tiny pipeline that test_pipeline, test_faults and test_bad_inputs_outputs
    compare against (once per session: the pytest-xdist workers share it)."""
    from tests.pipeline_helpers import reference_run

    return reference_run(tmp_path_factory)
