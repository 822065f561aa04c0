"""The runtime module is the one place that sets device, mode, precision, seeds, offline mode and log folders."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from research.pmg import ownership
from research.pmg.config import ConfigError, RuntimeConfig
from research.pmg.runtime import (OFFLINE_ENV, THREADS_ENV, cpu_threads, prepare_environment, requested_device_id,
                                 resolve_flash_attention, resolve_loss_scale, resolve_precision, setup_runtime)

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("precision, device, chip, expected", [
    ("auto", "CPU", "", "fp32"), ("auto", "Ascend", "ascend910b", "bf16"), ("auto", "Ascend", "ascend910_93", "bf16"),
    ("auto", "Ascend", "ascend910", "fp16"), ("auto", "Ascend", "ascend-unknown", "fp16"),
    ("fp16", "Ascend", "ascend910b", "fp16"), ("fp32", "Ascend", "ascend910", "fp32"), ("fp32", "CPU", "", "fp32"),
])
def test_precision_resolution_follows_the_chip(precision, device, chip, expected):
    """910A (MindSpore's "ascend910") has no bf16: auto must pick fp16 there, bf16 on 910B."""
    assert resolve_precision(precision, device, chip) == expected


def test_half_precision_the_device_cannot_run_is_a_config_error():
    with pytest.raises(ConfigError, match="runtime.precision=bf16 is not supported on CPU"):
        resolve_precision("bf16", "CPU")
    with pytest.raises(ConfigError, match=r"runtime.precision=bf16: this chip \(ascend910\) has no bf16"):
        resolve_precision("bf16", "Ascend", "ascend910")


@pytest.mark.parametrize("setting, device, chip, expected", [
    ("auto", "CPU", "", False), ("auto", "Ascend", "ascend910b", True), ("auto", "Ascend", "ascend910", False),
    ("off", "Ascend", "ascend910b", False), ("on", "Ascend", "ascend910b", True), ("off", "CPU", "", False),
])
def test_flash_attention_follows_the_chip(setting, device, chip, expected):
    assert resolve_flash_attention(setting, device, chip) is expected


@pytest.mark.parametrize("device, chip", [("CPU", ""), ("Ascend", "ascend910")])
def test_flash_attention_forced_on_where_there_is_no_kernel_is_a_config_error(device, chip):
    with pytest.raises(ConfigError, match="runtime.flash_attention=on: .* has no flash-attention kernel"):
        resolve_flash_attention("on", device, chip)


@pytest.mark.parametrize("setting, precision, expected", [
    ("auto", "fp16", "dynamic"), ("auto", "bf16", "none"), ("auto", "fp32", "none"), ("static", "fp16", "static"),
    ("none", "fp16", "none"),
])
def test_loss_scale_auto_is_dynamic_in_fp16_only(setting, precision, expected):
    assert resolve_loss_scale(setting, precision) == expected


MSRUN_WORKER_ENV = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2", "MS_NODE_ID": "1", "MS_SCHED_HOST": "127.0.0.1",
                    "MS_SCHED_PORT": "8118"}


class _StopAtSetDevice(Exception):
    pass


def test_under_msrun_the_runtime_asks_mindspore_for_no_explicit_device(tmp_path, monkeypatch):
    """mindspore.set_device negotiates a device per msrun worker only when device_id is None: an explicit id (the
    old default 0) put all eight workers of a node on NPU 0."""
    import mindspore as ms

    for key, value in MSRUN_WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    calls = []

    def record(target, device_id=None):
        calls.append((target, device_id))
        raise _StopAtSetDevice

    monkeypatch.setattr(ms, "set_device", record)
    with pytest.raises(_StopAtSetDevice):
        setup_runtime(RuntimeConfig(device="CPU", output_dir=str(tmp_path)))
    assert calls == [("CPU", None)]


def test_a_configured_device_id_under_msrun_is_one_config_error(monkeypatch):
    for key, value in MSRUN_WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="runtime.device_id=0 is set, but msrun gives each worker its own device"):
        requested_device_id(RuntimeConfig(device_id=0))
    assert requested_device_id(RuntimeConfig()) is None


def test_a_single_process_keeps_its_configured_device_id(monkeypatch):
    monkeypatch.delenv("MS_ROLE", raising=False)
    assert requested_device_id(RuntimeConfig(device_id=3)) == 3
    assert requested_device_id(RuntimeConfig()) is None


def test_prepare_environment_sets_offline_and_log_folders(tmp_path, monkeypatch):
    for key in [*OFFLINE_ENV, "LOCAL_DEFAULT_PATH", "LOG_MF_PATH", "GLOG_log_dir"]:
        monkeypatch.delenv(key, raising=False)
    out, log, cache = prepare_environment(RuntimeConfig(output_dir=str(tmp_path / "out")))
    assert (out, log, cache) == (tmp_path / "out", tmp_path / "out" / "log", tmp_path / "out" / "cache")
    assert all(p.is_dir() for p in (out, log, cache))
    assert all(os.environ[k] == "1" for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))
    assert os.environ["LOCAL_DEFAULT_PATH"] == str(out)
    assert os.environ["LOG_MF_PATH"] == str(log / "mindformers")
    assert (ownership.owner(log), ownership.owner(cache)) == ("log", "cache")
    assert prepare_environment(RuntimeConfig(output_dir=str(tmp_path / "out")))[1] == log  # its own: accepted again


def test_a_log_or_cache_folder_the_project_did_not_make_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "diary.txt").write_text("keep\n")
    for field in ("log_dir", "cache_dir"):
        with pytest.raises(ownership.OwnershipError, match=f"{mine}: exists, is not empty"):
            prepare_environment(RuntimeConfig(output_dir=str(tmp_path / "out"), **{field: str(mine)}))
    assert sorted(p.name for p in mine.iterdir()) == ["diary.txt"]


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


def test_mindspores_compile_cache_is_refused_unless_asked_for_as_an_experiment(tmp_path, monkeypatch):
    """MindSpore 2.7.2's compile cache can load a stale graph silently (benchmarks/bench_compile.py)."""
    from research.pmg.runtime import check_compile_cache

    monkeypatch.setenv("MS_COMPILER_CACHE_ENABLE", "1")
    with pytest.raises(ConfigError, match="MS_COMPILER_CACHE_ENABLE=1: .*stale graph"):
        prepare_environment(RuntimeConfig(output_dir=str(tmp_path / "out")))  # what every entry point runs first
    assert not (tmp_path / "out").exists()
    check_compile_cache({"MS_COMPILER_CACHE_ENABLE": "1", "PMG_ALLOW_COMPILE_CACHE": "1"})
    check_compile_cache({"MS_COMPILER_CACHE_ENABLE": "0"})
    check_compile_cache({})


def test_cpu_threads_come_from_the_config_then_the_environment_then_the_cores(monkeypatch, runtime):
    import mindspore as ms

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cpu_threads(0) == os.cpu_count() and cpu_threads(3) == 3
    monkeypatch.setenv(THREADS_ENV, "5")
    assert cpu_threads(0) == 5 and cpu_threads(3) == 3  # the config wins over the variable
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=f"{THREADS_ENV}='{bad}'"):
            cpu_threads(0)
    monkeypatch.undo()
    # the session's runtime (tests/conftest.py, num_threads 0) runs on what the environment asks for
    assert ms.get_context("runtime_num_threads") == cpu_threads(0)
