"""The ``runtime:`` section: device, mode, precision, seed and the output folder. Chosen in research.pmg.runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from research.pmg.config.checks import SEED_LIMIT, check

@dataclass
class RuntimeConfig:
    """Where and how MindSpore runs. Applied once by :func:`research.pmg.runtime.setup_runtime`."""

    device: Literal["auto", "CPU", "Ascend"] = "auto"  # auto: Ascend if the package and a device exist, else CPU
    # One process: the NPU to run on (None = MindSpore's default, DEVICE_ID or 0). Under msrun it must stay
    # unset: msrun gives each worker its own device only when none is named.
    device_id: Optional[int] = None
    mode: Literal["graph", "pynative"] = "graph"  # graph for speed; pynative only to debug
    # auto: bf16 where the chip has it (910B and later), fp16 with dynamic loss scaling where not (910A), fp32 on CPU
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # Fused flash attention in the LLM. auto: on where the chip has it (910B and later), off on 910A and CPU.
    flash_attention: Literal["auto", "on", "off"] = "auto"
    seed: int = 42
    num_threads: int = 0  # CPU runtime threads; 0 = $PMG_NUM_THREADS if set, else the number of cores
    output_dir: str = "output"  # every stage writes below this folder
    log_dir: str = ""  # MindSpore/MindFormers logs; "" = <output_dir>/log
    cache_dir: str = ""  # built tokenizers, cached latents; "" = <output_dir>/cache

    def validate(self, where: str) -> None:
        check(self.device_id is None or 0 <= self.device_id < 4096, where, "device_id", "must be in [0, 4096) or unset")
        check(0 <= self.num_threads <= 4096, where, "num_threads", "must be in [0, 4096] (0 = number of cores)")
        check(0 <= self.seed < SEED_LIMIT, where, "seed", "must be in [0, 2**32)")
        check(bool(self.output_dir), where, "output_dir", "must not be empty")
        if self.device == "CPU":  # with device auto the same rules run at setup, once the device is known
            check(self.precision in ("auto", "fp32"), where, "precision",
                   f"{self.precision} is not supported on CPU (device: CPU); use fp32 or auto")
            check(self.flash_attention != "on", where, "flash_attention",
                   "CPU has no flash-attention kernel (device: CPU); use auto or off")
