"""Test-wide set-up: one CPU runtime per session, a fixture that runs a test in both modes, and the module order
that lets ``pytest -n 2 --dist loadfile`` (pytest-xdist) keep both cores busy to the end."""
import os
import time
from pathlib import Path

import pytest

from research.pmg.config import RuntimeConfig
from research.pmg.runtime import set_execution_mode, setup_runtime

# The modules that take longest (the per-worker summary below, 2 workers on 2 cores), started first so that neither
# worker is left with a long module at the end. Every other module follows in its usual order. test_pipeline and
# test_bad_inputs_outputs read the pipeline reference that test_faults makes: they come late enough not to wait.
LONGEST_FIRST = ("test_faults", "test_train", "test_mini_pmg", "test_evaluate_methods", "test_selftest",
                 "test_mini_images", "test_generate", "test_official", "test_bad_inputs_outputs", "test_api",
                 "test_demo", "test_keywords", "test_mini_llm", "test_bad_inputs", "test_pipeline",
                 "test_bad_inputs_config")


def pytest_collection_modifyitems(config, items):
    """The longest modules first: ``--dist loadfile --no-loadscope-reorder`` hands out whole modules in this
    order (a module's fixtures are made once, in one worker)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))  # stable within a module


# Per pytest-xdist worker: the modules it ran, in order, with their seconds, and when it finished. Collected in the
# controller from the reports the workers send; printed after the run to keep LONGEST_FIRST honest.
_WORKERS: dict[str, dict] = {}
_STARTED = time.time()


def pytest_runtest_logreport(report):
    node = getattr(report, "node", None)  # set by pytest-xdist in the controller
    if node is None:
        return
    worker = _WORKERS.setdefault(node.gateway.id, {"modules": {}, "finished": 0.0})
    module = Path(report.nodeid.split("::")[0]).stem
    worker["modules"][module] = worker["modules"].get(module, 0.0) + report.duration
    worker["finished"] = time.time() - _STARTED


def pytest_terminal_summary(terminalreporter):
    if not _WORKERS:
        return
    terminalreporter.section("seconds per module and worker")
    for name, worker in sorted(_WORKERS.items()):
        modules = ", ".join(f"{m} {s:.0f}" for m, s in worker["modules"].items())
        terminalreporter.write_line(f"{name}: busy {sum(worker['modules'].values()):.0f} s, last report at "
                                    f"{worker['finished']:.0f} s: {modules}")


@pytest.fixture(scope="session", autouse=True)
def runtime_only_children():
    """Processes started with this process's environment (``bash scripts/run_train.sh``, check_ascend, msrun) get
    the runtime stack only, as tests/subprocess_env.py gives the others. A fixture, not set at import: it runs in
    the process that runs the tests, never in the pytest-xdist controller, whose workers keep the references."""
    from tests.subprocess_env import RUNTIME_SITE

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(RUNTIME_SITE), before]))
    yield
    if before is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = before


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
