"""Stable Diffusion 2.x end to end: the tiny v-prediction SD 2 (tests/tiny_sd2.py, 1024-wide text context) goes from
its diffusers folder through ``python -m ckpt_convert sd``, ``python -m research.pmg.train`` and
``python -m research.pmg.generate`` (each command's main, in this process), with a config written the way a user
would: configs/tiny.yaml as the base and models.diffusion.path naming the converted folder.

The stages run in PyNative mode (runtime.mode): for 3 steps of tiny models that takes half the time of compiling
them. The numbers are checked elsewhere: the SD 2 training step against PyTorch in tests/test_vprediction.py, the
compiled SD 2 sampling loop against diffusers in tests/test_sampling_reference.py."""
import json
import math

import numpy as np
import mindspore as ms
from PIL import Image

from ckpt_convert.__main__ import main as convert_main
from research.pmg.cli import run
from research.pmg.generate.__main__ import main as generate_main
from research.pmg.generate.pipeline import GenerationPipeline
from research.pmg.runtime import set_execution_mode
from research.pmg.train.__main__ import main as train_main
from research.pmg.train.loop import Trainer
from tests.tiny_models import TINY_CONFIG
from tests.tiny_sd2 import SD2_CONTEXT, shared_tiny_sd2, write_stage_inputs

STEPS = 3


def test_convert_train_generate(tmp_path, tiny_tokenizers, tmp_path_factory, monkeypatch, capsys, request):
    folder = shared_tiny_sd2(tmp_path_factory, tiny_tokenizers.diffusion).folder
    converted = tmp_path / "sd2"
    assert convert_main(["sd", "--src", str(folder), "--dst", str(converted)]) == 0
    assert "tensors     364 (every target parameter filled exactly once)" in capsys.readouterr().out
    assert json.loads((converted / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == \
        "v_prediction"

    root = tmp_path / "run"
    write_stage_inputs(root)
    config = tmp_path / "sd2.yaml"
    config.write_text(f"""\
base: {TINY_CONFIG}
runtime:
  output_dir: {root}
  mode: pynative
models:
  diffusion:
    path: {converted}
    scheduler:
      prediction_type: v_prediction
train:
  max_steps: {STEPS}
  warmup_steps: 1
  save_every: {STEPS}
  eval_every: {STEPS}
  eval_batches: 1
generate:
  steps: 3
  scheduler: ddim
  micro_batch: 3
  max_samples: 1
  soft_checkpoint: {root / "train"}
""")
    widths = {}
    inputs = Trainer._inputs

    def record_inputs(self, *args, **kwargs):  # the contexts the loss cell hands the UNet, with E_m concatenated
        out = inputs(self, *args, **kwargs)
        widths["train"] = (out[2].shape, out[3].shape, self.encoder.to_context.weight.shape)
        return out

    sample = GenerationPipeline._sample

    def record_sample(self, cond, uncond, latents):
        widths["generate"] = (cond.shape, uncond.shape)
        return sample(self, cond, uncond, latents)

    monkeypatch.setattr(Trainer, "_inputs", record_inputs)
    monkeypatch.setattr(GenerationPipeline, "_sample", record_sample)

    # The commands run in this process and set the process-wide mode to the config's (pynative): put graph mode
    # back whatever happens, or every later test in this worker would run eagerly.
    request.addfinalizer(lambda: set_execution_mode("graph"))
    assert run(train_main, ["--config", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"trained {STEPS} steps; last loss " in out, out
    log = [json.loads(line) for line in (root / "train" / "train_log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in log if "loss" in record]
    assert len(losses) == STEPS and all(math.isfinite(loss) and loss > 0 for loss in losses), log
    soft = root / "train" / "checkpoints" / f"step-{STEPS:06d}" / "soft_preference.ckpt"
    saved = ms.load_checkpoint(str(soft))
    weight = saved["to_context.weight"].asnumpy()  # E_m is made 1024 wide
    assert weight.shape == (SD2_CONTEXT, 64) and np.isfinite(weight).all()
    target_ctx, pref_ctx, to_context = widths["train"]
    assert target_ctx[-1] == pref_ctx[-1] == to_context[0] == SD2_CONTEXT

    assert run(generate_main, ["--config", str(config), "--no-progress"]) == 0
    assert "generate: 1 samples generated" in capsys.readouterr().out
    record = json.loads((root / "generate" / "manifest.jsonl").read_text())
    assert record["soft"] is True and len(record["candidates"]) == 3
    for candidate in record["candidates"]:
        image = np.asarray(Image.open(root / "generate" / candidate["image"]))
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8  # sample_size 8 x VAE factor 2
    cond, uncond = widths["generate"]
    assert cond[-1] == SD2_CONTEXT and cond[1:] == uncond[1:]
