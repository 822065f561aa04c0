"""Guided sampling (research.pmg.generate.pipeline) against diffusers' own StableDiffusionPipeline.

One tiny SD (tests.hf_tiny_models) is saved in diffusers format and converted with ``ckpt_convert sd``, so both
sides hold the same weights and the same scheduler config. Both then sample from the same initial latents and
the same precomputed text contexts (diffusers takes them as ``prompt_embeds`` / ``negative_prompt_embeds``, so
no tokenizer is involved), with the same steps and guidance, and decode to images in [0, 1]. The reference is
diffusers' loop end to end: its scheduler ``step``, its classifier-free guidance
``uncond + g * (cond - uncond)``, its VAE ``1 / scaling_factor`` and its [-1, 1] -> [0, 1] post-processing.

Two models: the tiny SD 1.x (epsilon prediction, 32-wide context) and the tiny SD 2.x of tests/tiny_sd2.py
(v-prediction with SD 2.1's scheduler config, 1024-wide context, linear transformer projections). Each is compiled
once (one GenerationPipeline per model; the scheduler is swapped between tests, as generation does per run).
"""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor

from ckpt_convert import sd
from research.pmg.config.generate import GenerateConfig
from research.pmg.generate.pipeline import GenerationPipeline, to_uint8
from research.pmg.generate.run import generation_scheduler
from research.pmg.models.diffusion import build_diffusion
from tests.hf_tiny_models import save_stable_diffusion
from tests.tiny_models import tiny_config
from tests.tiny_sd2 import sd2_config, shared_tiny_sd2

STEPS, GUIDANCE = 5, 7.5
# Both sides compute in float32, so what is left is float rounding in a different order (MindSpore CPU kernels vs
# PyTorch), amplified by guidance (up to 2g - 1 = 14 times a UNet difference), 5 steps and the VAE: 2e-6 to 4e-6
# of the [0, 1] range measured here, for either model. 1e-4 (0.026 of one uint8 level) leaves a margin of 25 over
# that and still fails every change to the loop tried: the smallest, the UNet told t - 1, moves pixels by 5e-3.
ATOL = 1e-4


def pmg_pipeline(cfg, runtime) -> GenerationPipeline:
    """PMG's sampling pipeline on ``cfg``'s diffusion model (its scheduler is set by each test)."""
    settings = GenerateConfig(steps=STEPS, guidance=GUIDANCE, micro_batch=2)
    settings.validate("test: ")
    return GenerationPipeline(build_diffusion(cfg.models.diffusion, runtime), generation_scheduler(cfg, settings),
                              steps=STEPS, guidance=GUIDANCE, micro_batch=settings.micro_batch)


@pytest.fixture(scope="module")
def sd1_epsilon(tmp_path_factory, runtime, tiny_tokenizers):
    """The diffusers folder, its pipeline (PyTorch, fp32), and the PMG config and pipeline of its converted copy."""
    folder = tmp_path_factory.mktemp("hf-sd")
    reference = save_stable_diffusion(folder, tiny_tokenizers.diffusion)
    converted = tmp_path_factory.mktemp("sd-converted") / "sd"
    sd.convert(folder, converted)
    cfg = tiny_config(runtime.output_dir, f"models.diffusion.path={converted}")
    return folder, reference, cfg, pmg_pipeline(cfg, runtime)


@pytest.fixture(scope="module")
def sd2_v_prediction(tmp_path_factory, runtime, tiny_tokenizers):
    """The same for the tiny SD 2.x (tests/tiny_sd2.py)."""
    tiny = shared_tiny_sd2(tmp_path_factory, tiny_tokenizers.diffusion)
    cfg = sd2_config(runtime.output_dir, tiny.converted)
    return tiny.folder, tiny.pipe, cfg, pmg_pipeline(cfg, runtime)


def diffusers_images(folder, reference, scheduler_name: str, cond, uncond, latents) -> np.ndarray:
    """diffusers' StableDiffusionPipeline with ``scheduler_name``'s class loaded from the folder's scheduler.

    Loaded from the file, as a diffusers user would: ``from_config`` on the in-memory DDPM config would give
    DPM-Solver its own default ``timestep_spacing`` (linspace) instead of the saved one (leading), because
    diffusers drops the keys a config left at their defaults when it changes class.
    """
    cls = {"ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}[scheduler_name]
    scheduler = cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    pipe = StableDiffusionPipeline(**{**reference.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompt_embeds=torch.tensor(cond), negative_prompt_embeds=torch.tensor(np.broadcast_to(
            uncond, cond.shape).copy()), latents=torch.tensor(latents), num_inference_steps=STEPS,
            guidance_scale=GUIDANCE, output_type="np").images


@pytest.mark.parametrize("scheduler_name", ["ddim", "dpm_solver"])
@pytest.mark.parametrize("model", ["sd1_epsilon", "sd2_v_prediction"])
def test_guided_sampling_equals_diffusers(model, scheduler_name, request):
    folder, reference, cfg, pipeline = request.getfixturevalue(model)
    settings = GenerateConfig(steps=STEPS, guidance=GUIDANCE, scheduler=scheduler_name, micro_batch=2)
    settings.validate("test: ")
    pipeline.scheduler = generation_scheduler(cfg, settings)
    prediction = reference.scheduler.config.prediction_type
    assert prediction == pipeline.scheduler.config.prediction_type == model.split("_", 1)[1]
    rng = np.random.default_rng(3)
    tokens, width = cfg.models.diffusion.tokenizer_max_length, pipeline.parts.cross_attention_dim
    cond = rng.standard_normal((3, tokens, width)).astype(np.float32)  # 3 candidates: the last call is padded
    uncond = rng.standard_normal((tokens, width)).astype(np.float32)
    latents = pipeline.initial_latents([(0, i) for i in range(3)])

    images = pipeline(cond, uncond, latents)
    expected = diffusers_images(folder, reference, scheduler_name, cond, uncond, latents)

    assert images.shape == expected.shape == (3, pipeline.size, pipeline.size, 3)
    diff = float(np.abs(images - expected).max())
    print(f"{model} {scheduler_name}: max abs pixel difference {diff:.2e} (pixel std {expected.std():.3f})")
    assert diff < ATOL, diff
    # uint8 as diffusers' numpy_to_pil makes it, wherever float noise cannot tip the rounding (255 x more than 255 * ATOL from n.5)
    reference_uint8 = np.stack([np.asarray(image) for image in VaeImageProcessor.numpy_to_pil(expected)])
    scaled = expected * 255
    clear = np.abs(scaled - np.floor(scaled) - 0.5) > 255 * ATOL
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(to_uint8(images)[clear], reference_uint8[clear])
