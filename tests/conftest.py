"""Test-wide set-up: one CPU runtime per session, and a fixture that runs a test in both modes."""
import pytest

from research.pmg.config import RuntimeConfig
from research.pmg.runtime import set_execution_mode, setup_runtime


@pytest.fixture(scope="session")
def runtime(tmp_path_factory):
    """The CPU runtime the whole suite runs on (logs and caches under a temporary folder)."""
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

    return build_diffusion_parts(tiny_cfg, runtime, tiny_tokenizers)


@pytest.fixture(scope="session")
def tiny_clip(tiny_cfg, runtime, tiny_tokenizers):
    from research.pmg.models import build_clip_parts

    return build_clip_parts(tiny_cfg, runtime, tiny_tokenizers)
