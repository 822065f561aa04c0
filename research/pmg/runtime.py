"""The one place that configures MindSpore: device, execution mode, precision, seeds, offline mode, logs.

No other module calls ``set_context``/``set_device``. Call :func:`setup_runtime` at the start of every
entry point, before MindFormers or MindONE are imported: MindFormers fixes its log folder at import time
(``./output/log`` of whatever the working directory is, unless ``LOCAL_DEFAULT_PATH``/``LOG_MF_PATH``
say otherwise), and the CPU compatibility layer must be installed before models are built.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from research.pmg import ownership
from research.pmg.config import ConfigError, RuntimeConfig
from research.pmg.layout import runtime_dirs

# No stage may reach a model hub: weights come from local folders converted by ckpt_convert.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class Runtime:
    """What :func:`setup_runtime` decided, for the stages to read (never to change)."""

    device: str  # "CPU" or "Ascend"
    mode: str  # "graph" or "pynative"
    precision: str  # "fp32", "fp16" or "bf16": the compute dtype of frozen models
    output_dir: Path
    log_dir: Path
    cache_dir: Path
    rank: int = 0  # this worker's index under msrun; 0 alone
    world_size: int = 1  # number of data-parallel workers
    chip: str = ""  # the Ascend SoC as MindSpore names it ("ascend910b", "ascend910" = 910A, ...); "" on CPU
    flash_attention: bool = False  # the LLM uses the fused FlashAttentionScore kernel
    device_id: Optional[int] = None  # the device asked for; None = msrun's (or MindSpore's) choice

    @property
    def compute_dtype(self):
        """The MindSpore dtype matching ``precision``."""
        import mindspore as ms

        return {"fp32": ms.float32, "fp16": ms.float16, "bf16": ms.bfloat16}[self.precision]


@dataclass(frozen=True)
class ChipFeatures:
    """What an Ascend chip can run fast: bf16 arithmetic and the fused flash-attention kernel."""

    bf16: bool
    flash_attention: bool


# MindSpore's names (MSContext.get_ascend_soc_version). 910A (the official PMG code's hardware) has neither bf16
# nor FlashAttentionScore ("Only support on Atlas A2 training series"); 910B (Atlas A2) and 910_93 have both.
CHIPS = {
    "ascend910": ChipFeatures(bf16=False, flash_attention=False),
    "ascend910b": ChipFeatures(bf16=True, flash_attention=True),
    "ascend910_93": ChipFeatures(bf16=True, flash_attention=True),
    "ascend310p": ChipFeatures(bf16=False, flash_attention=False),
}
# A chip this table does not know gets the path that runs everywhere (fp16, no flash attention), with a warning.
UNKNOWN_CHIP = ChipFeatures(bf16=False, flash_attention=False)


def chip_features(device: str, chip: str) -> ChipFeatures:
    """Features of ``chip`` on ``device``; CPU has neither."""
    if device != "Ascend":
        return ChipFeatures(bf16=False, flash_attention=False)
    return CHIPS.get(chip, UNKNOWN_CHIP)


def detect_device() -> str:
    """Ascend when this MindSpore build has the Ascend backend and a device is visible, else CPU."""
    import mindspore as ms

    try:
        if ms.hal.is_available("Ascend") and ms.hal.device_count("Ascend") > 0:
            return "Ascend"
    except (RuntimeError, ValueError):
        pass
    return "CPU"


def detect_chip(device: str) -> str:
    """The Ascend SoC name MindSpore reports once the device is set (MindFormers and mindspore.amp read the same)."""
    if device != "Ascend":
        return ""
    from mindspore._c_expression import MSContext

    return MSContext.get_instance().get_ascend_soc_version() or ""


def resolve_precision(precision: str, device: str, chip: str = "") -> str:
    """``auto``: bf16 where the chip has it, fp16 on Ascend chips without it (910A), fp32 on CPU.

    An explicit half precision the device cannot run is a config error, named here rather than deep in a kernel.
    """
    features = chip_features(device, chip)
    if precision == "auto":
        if device != "Ascend":
            return "fp32"
        return "bf16" if features.bf16 else "fp16"
    if device == "CPU" and precision != "fp32":
        raise ConfigError(f"runtime.precision={precision} is not supported on CPU; use fp32 or auto")
    if precision == "bf16" and device == "Ascend" and not features.bf16:
        raise ConfigError(f"runtime.precision=bf16: this chip ({chip or 'unknown'}) has no bf16; use fp16 or auto")
    return precision


def resolve_flash_attention(setting: str, device: str, chip: str = "") -> bool:
    """``auto``: on where the chip has the kernel (910B and later); ``on`` elsewhere is a config error."""
    available = chip_features(device, chip).flash_attention
    if setting == "on" and not available:
        where = "CPU" if device != "Ascend" else f"this chip ({chip or 'unknown'})"
        raise ConfigError(f"runtime.flash_attention=on: {where} has no flash-attention kernel; use auto or off")
    return available if setting == "auto" else setting == "on"


def resolve_loss_scale(setting: str, precision: str) -> str:
    """``auto``: dynamic loss scaling in fp16 (its gradients underflow without it), none in bf16 and fp32."""
    if setting != "auto":
        return setting
    return "dynamic" if precision == "fp16" else "none"


def requested_device_id(cfg: RuntimeConfig) -> Optional[int]:
    """The device id to pass to ``mindspore.set_device``: None under msrun, which negotiates one per worker.

    ``mindspore.set_device`` lets msrun give each worker its own device only when the id is None; any explicit
    id (even 0) pins every worker of the node to that one NPU. So a configured id under msrun is an error.
    """
    if launched_by_msrun() and cfg.device_id is not None:
        raise ConfigError(f"runtime.device_id={cfg.device_id} is set, but msrun gives each worker its own device "
                          "and an explicit id would put every worker on that one; remove runtime.device_id")
    return cfg.device_id


# An experiment may load MindSpore's compile cache on purpose (benchmarks/bench_compile.py sets this).
ALLOW_COMPILE_CACHE = "PMG_ALLOW_COMPILE_CACHE"


def check_compile_cache(env) -> None:
    """Refuse MindSpore's compile cache (``MS_COMPILER_CACHE_ENABLE=1``) unless ``PMG_ALLOW_COMPILE_CACHE=1``.

    MindSpore 2.7.2 keys a cached graph by the entry script's hash and the compile order alone, and skips every
    module under a ``sys.path`` entry when it hashes: a changed model, config or graph sequence loads a stale graph
    without an error, the training step cannot be loaded on CPU, and loaded graphs differ from compiled ones in the
    last bits (benchmarks/bench_compile.py, benchmarks/README.md).
    """
    if env.get("MS_COMPILER_CACHE_ENABLE") == "1" and env.get(ALLOW_COMPILE_CACHE) != "1":
        raise ConfigError("MS_COMPILER_CACHE_ENABLE=1: MindSpore's compile cache can load a stale graph without an "
                          "error (it keys graphs by the entry script and the compile order only); unset it "
                          f"(or set {ALLOW_COMPILE_CACHE}=1 to experiment, see benchmarks/bench_compile.py)")


def prepare_environment(cfg: RuntimeConfig) -> tuple[Path, Path, Path]:
    """Set offline and log-folder environment variables and create the output folders.

    The log and cache folders are marked as the project's (``.pmg-owned``); an existing one that is not (a user's
    folder given as ``runtime.log_dir``/``cache_dir``, or another stage's) is refused with :class:`~research.pmg.ownership.OwnershipError`.

    Safe to call before MindSpore is imported; returns (output_dir, log_dir, cache_dir).
    """
    check_compile_cache(os.environ)
    output_dir, log_dir, cache_dir = runtime_dirs(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)  # a container: each stage checks the folder it writes in it
    # MindSpore, MindFormers and the caches write into these: only into folders this project made (ownership.py).
    ownership.adopt(log_dir, "log")
    ownership.adopt(cache_dir, "cache")
    os.environ.update(OFFLINE_ENV)
    # MindFormers writes <LOCAL_DEFAULT_PATH>/log and LOG_MF_PATH; MindSpore's glog writes GLOG_log_dir.
    os.environ["LOCAL_DEFAULT_PATH"] = str(output_dir)
    os.environ["LOG_MF_PATH"] = str(log_dir / "mindformers")
    os.environ.setdefault("GLOG_log_dir", str(log_dir / "mindspore"))
    # Graph-compile diagnostics (analyze_fail.ir under rank_*/) would otherwise land in the working directory.
    os.environ.setdefault("MS_DEV_SAVE_GRAPHS_PATH", str(log_dir / "graphs"))
    return output_dir, log_dir, cache_dir


THREADS_ENV = "PMG_NUM_THREADS"


def cpu_threads(configured: int) -> int:
    """Threads of MindSpore's CPU runtime: ``runtime.num_threads``, else ``$PMG_NUM_THREADS``, else every core.

    The variable is for jobs that run side by side, such as the test runner's two workers on two cores: a process
    per worker, each on every core, oversubscribes them, and the runtime's threads then wait on each other (two
    tiny pipelines at once: 95.7 s with 2 threads each, 85.8 s with 1). Raises ConfigError naming the variable
    when it is not a positive integer.
    """
    if configured:
        return configured
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{THREADS_ENV}={raw!r}: must be a positive integer (threads per process)")
        return int(raw)
    return os.cpu_count() or 1


def setup_runtime(cfg: RuntimeConfig) -> Runtime:
    """Apply ``cfg`` to MindSpore and return the resolved runtime. Call once per process."""
    output_dir, log_dir, cache_dir = prepare_environment(cfg)

    import mindspore as ms

    device = detect_device() if cfg.device == "auto" else cfg.device
    if cfg.device == "Ascend" and detect_device() != "Ascend":
        # MindSpore would fail deep in set_device with a multi-line C++ trace
        raise ConfigError("runtime.device=Ascend: no Ascend device here (this MindSpore build has no Ascend "
                          "backend, or no NPU is visible); use auto or CPU")
    device_id = requested_device_id(cfg)
    ms.set_device(device, device_id)
    chip = detect_chip(device)
    if device == "Ascend" and chip not in CHIPS:
        logging.getLogger(__name__).warning("unknown Ascend chip %r: running fp16 without flash attention "
                                            "(set runtime.precision / runtime.flash_attention to override)", chip)
    precision = resolve_precision(cfg.precision, device, chip)
    flash_attention = resolve_flash_attention(cfg.flash_attention, device, chip)
    set_execution_mode(cfg.mode)
    if device == "CPU":
        ms.set_context(runtime_num_threads=cpu_threads(cfg.num_threads))
    seed_everything(cfg.seed)
    if device == "CPU":
        from research.pmg.compat import install_cpu_compat

        install_cpu_compat()
    rank, world_size = init_data_parallel() if launched_by_msrun() else (0, 1)
    return Runtime(device=device, mode=cfg.mode, precision=precision, output_dir=output_dir,
                   log_dir=log_dir, cache_dir=cache_dir, rank=rank, world_size=world_size, chip=chip,
                   flash_attention=flash_attention, device_id=device_id)


def launched_by_msrun() -> bool:
    """msrun runs the script in each worker (MS_ROLE=MS_WORKER) and in a scheduler process (MS_SCHED).

    Both must call ``init()``: in the scheduler it serves the cluster's meta server and ends the process
    when the job is done, so the scheduler never runs the stage itself.
    """
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED")


def init_data_parallel() -> tuple[int, int]:
    """Join the msrun job and make gradient reduction data parallel (mean over workers); (rank, world)."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def set_execution_mode(mode: str) -> None:
    """Switch between graph (compiled, the default) and PyNative (eager, for debugging) execution."""
    import mindspore as ms

    if mode not in ("graph", "pynative"):
        raise ValueError(f"runtime.mode must be 'graph' or 'pynative', got {mode!r}")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and MindSpore so a run is reproducible from its config."""
    import mindspore as ms

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


@contextlib.contextmanager
def counting_compiles() -> Iterator[list[str]]:
    """A list that collects the name of every graph MindSpore compiles inside the block (cells and ``jit``
    functions); a graph reused from MindSpore's in-process cache is not counted, and PyNative compiles none.

    It listens where MindSpore itself decides to compile: ``mindspore.common.api._check_recompile`` runs once per
    new compile, after the cache lookup, in both the cell and the ``jit`` path (MindSpore 2.7's api.py).
    """
    from mindspore.common import api

    compiled: list[str] = []
    original = api._check_recompile

    def check(obj, compile_args, kwargs, full_function_name, *rest):
        compiled.append(str(full_function_name))
        return original(obj, compile_args, kwargs, full_function_name, *rest)

    api._check_recompile = check
    try:
        yield compiled
    finally:
        api._check_recompile = original
