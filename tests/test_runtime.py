"""The runtime module is the one place that sets device, mode, precision, seeds, offline mode and log folders."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from research.pmg.config import RuntimeConfig
from research.pmg.runtime import OFFLINE_ENV, prepare_environment, resolve_precision

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("precision, device, expected", [
    ("auto", "CPU", "fp32"), ("auto", "Ascend", "bf16"), ("fp16", "Ascend", "fp16"), ("fp32", "CPU", "fp32"),
])
def test_precision_resolution(precision, device, expected):
    assert resolve_precision(precision, device) == expected


def test_half_precision_on_cpu_is_refused():
    with pytest.raises(ValueError, match="runtime.precision=bf16 is not supported on CPU"):
        resolve_precision("bf16", "CPU")


def test_prepare_environment_sets_offline_and_log_folders(tmp_path, monkeypatch):
    for key in [*OFFLINE_ENV, "LOCAL_DEFAULT_PATH", "LOG_MF_PATH", "GLOG_log_dir"]:
        monkeypatch.delenv(key, raising=False)
    out, log, cache = prepare_environment(RuntimeConfig(output_dir=str(tmp_path / "out")))
    assert (out, log, cache) == (tmp_path / "out", tmp_path / "out" / "log", tmp_path / "out" / "cache")
    assert all(p.is_dir() for p in (out, log, cache))
    assert all(os.environ[k] == "1" for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))
    assert os.environ["LOCAL_DEFAULT_PATH"] == str(out)
    assert os.environ["LOG_MF_PATH"] == str(log / "mindformers")


def test_setup_runtime_in_a_fresh_process_keeps_logs_out_of_the_working_directory(tmp_path):
    """MindFormers writes ./output/log of the working directory unless told otherwise at import time."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import mindspore as ms
        from research.pmg.config import load_config
        from research.pmg.runtime import setup_runtime
        from research.pmg.compat import is_installed
        from research.pmg.models import build_llm
        cfg = load_config({str(REPO / "configs" / "tiny.yaml")!r}, ["runtime.output_dir=out", "runtime.seed=3"])
        rt = setup_runtime(cfg.runtime)
        import numpy as np
        draw = np.random.randint(1 << 30)  # before model building, which draws from numpy's global generator
        build_llm(cfg, rt)
        print(rt.device, rt.mode, rt.precision, ms.get_context("mode") == ms.GRAPH_MODE,
              ms.get_context("device_target"), is_installed(), draw)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    device, mode, precision, graph, target, compat, draw = done.stdout.split()[-7:]
    assert (device, mode, precision, graph, target, compat) == ("CPU", "graph", "fp32", "True", "CPU", "True")
    import numpy as np
    np.random.seed(3)
    assert int(draw) == np.random.randint(1 << 30), "setup_runtime did not seed numpy from runtime.seed"
    assert not (tmp_path / "output").exists(), "something wrote ./output in the working directory"
    assert (tmp_path / "out" / "log").is_dir()
