"""v-prediction training (research/pmg/train/step.py) against diffusers/PyTorch, on the tiny SD 2 (tests/tiny_sd2.py).

- The loss cell's noisy latents and target, with a stand-in UNet, against diffusers' ``DDPMScheduler.add_noise`` and
  ``get_velocity`` (and ``noise`` for an epsilon model) over the same latents, noise and timesteps.
- One training step of the PMG trainer on the converted tiny SD 2 (frozen tiny LLM, soft-preference encoder, context
  assembly, UNet, v target, MSE; gradients of its loss cell, then its step's AdamW) against PyTorch: the same
  computation from the LLM's hidden states at the L soft-token positions onward, with diffusers' UNet and scheduler
  holding the same weights. The loss, the gradients of the soft preference's map into the UNet's context
  (``to_context``) and its parameters after the optimizer step (NumPy AdamW, tests/test_train_numerics.py) must
  agree. The step's loss scaling, accumulation and clipping are identities here (fp32, one micro-batch, no clip) and
  are checked against NumPy in tests/test_train_numerics.py. The prefix and the soft tokens also learn,
  but their gradients come through the LLM, which has no PyTorch counterpart here; that they change is checked.
"""
import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import nn

from research.pmg.config import TrainConfig
from research.pmg.models.diffusion import build_scheduler
from research.pmg.runtime import resolve_loss_scale, set_execution_mode
from research.pmg.train.step import PMGDiffusionLoss, learning_rates
from tests.test_train_numerics import NumpyAdamW
from tests.tiny_sd2 import SD2_CONTEXT, sd2_config, shared_tiny_sd2, write_stage_inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizers):
    return shared_tiny_sd2(tmp_path_factory, tiny_tokenizers.diffusion)


def diffusers_scheduler(tiny):
    """The tiny SD 2's scheduler config (SD 2.1's), in the class diffusers trains with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_pretrained(tiny.folder, subfolder="scheduler", local_files_only=True)


class OffsetUNet(nn.Cell):
    """Stand-in UNet: ``(sample + offset,)``, so the loss cell's squared error ``(noisy + offset - target)^2`` holds
    both its noisy latents and its target; the offset (mostly > 3) keeps a sign error in either from cancelling."""

    def __init__(self, offset: np.ndarray):
        super().__init__()
        self.offset = ms.Tensor(offset)
        self.dtype = ms.float32

    def construct(self, sample, timestep, encoder_hidden_states=None):
        return (sample + self.offset,)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_noisy_latents_and_target_equal_diffusers(tiny, runtime, prediction_type):
    reference = diffusers_scheduler(tiny)
    cfg = sd2_config(runtime.output_dir, tiny.converted)
    alphas = build_scheduler(cfg.models.diffusion.scheduler, tiny.converted / "scheduler").alphas_cumprod.asnumpy()
    rng = np.random.default_rng(0)
    shape = (6, 4, 8, 8)
    latents = (rng.standard_normal(shape) * 0.8).astype(np.float32)  # ~ SD latents after scaling_factor
    noise = rng.standard_normal(shape).astype(np.float32)
    timesteps = np.array([0, 1, 250, 500, 998, 999], np.int32)
    offset = (4.0 + rng.standard_normal(shape)).astype(np.float32)
    loss = PMGDiffusionLoss(nn.Cell(), OffsetUNet(offset), alphas, prediction_type, TrainConfig())
    context = ms.Tensor(np.zeros((6, 2, SD2_CONTEXT), np.float32))
    errors = loss.squared_errors(ms.Tensor(latents), context, ms.Tensor(noise), ms.Tensor(timesteps)).asnumpy()

    x, n, t = torch.tensor(latents), torch.tensor(noise), torch.tensor(timesteps, dtype=torch.long)
    target = reference.get_velocity(x, n, t) if prediction_type == "v_prediction" else n
    assert reference.config.prediction_type == "v_prediction"  # the model's; the epsilon case checks the switch
    expected = ((reference.add_noise(x, n, t) + torch.tensor(offset) - target) ** 2).numpy()
    diff = float(np.abs(errors - expected).max())
    print(f"{prediction_type}: squared error vs diffusers max abs diff {diff:.1e} (values up to {expected.max():.0f})")
    # float32 both sides, sqrt(alpha) products rounded in another order, then squared: 2e-5 at values up to 70
    np.testing.assert_allclose(errors, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trainer(tiny, runtime, tmp_path_factory):
    from research.pmg.records.keywords import load_keywords
    from research.pmg.records.samples import load_prepared
    from research.pmg.train.build import build_trainer

    out = tmp_path_factory.mktemp("vpred-inputs")
    write_stage_inputs(out)
    # no clipping: its factor would depend on the LLM-side gradients too; constant lr from the first step on
    cfg = sd2_config(runtime.output_dir, tiny.converted, "train.grad_clip=0", "train.warmup_steps=0",
                     "train.lr=1e-3", "train.max_steps=10")
    keywords = load_keywords(out / "keywords" / "keywords.jsonl")
    return build_trainer(cfg, runtime, load_prepared(out / "data"), keywords)


def test_one_training_step_equals_pytorch(tiny, trainer):
    """The loss, the to_context gradients and the to_context update of one step against PyTorch + diffusers.

    Float32 on both sides through the tiny UNet's forward and backward, summed in another order. Measured: the loss
    equal to 1e-6 relative (checked at 1e-5), gradient entries up to 3.6e-5 within 8e-10 (checked at 1e-4 of the
    largest), parameters after the step within 7e-8 of NumPy AdamW on PyTorch's gradients (checked at 2e-6; lr 1e-3,
    median update 2e-4). These gradients (~2e-6) sit near Adam's eps (1e-6), so the update still depends on their
    size, not only on their sign.
    """
    encoder, loss_net = trainer.encoder, trainer.loss_net
    train = trainer.cfg.train  # so that the step is exactly: gradients, then AdamW
    assert train.grad_clip == 0 and train.grad_accum_steps == 1
    assert resolve_loss_scale(train.loss_scale, trainer.runtime.precision) == "none"
    assert loss_net.v_prediction and loss_net.unet.config.cross_attention_dim == SD2_CONTEXT
    rows = trainer.arrays.indices("train")[:trainer.cfg.train.batch_size]
    inputs = trainer._inputs(rows, step=0, micro=0, stream=0)
    prompt_ids, latents, target_ctx, pref_ctx, noise, timesteps = (x.asnumpy() for x in inputs)
    weight, bias = (p.asnumpy().copy() for p in (encoder.to_context.weight, encoder.to_context.bias))
    trainable = loss_net.trainable_params()
    before = {p.name: p.asnumpy().copy() for p in trainable}

    set_execution_mode("pynative")  # eager: compiling the step costs 10x running it (tests/test_train.py compiles)
    seen = []  # the input of the soft preference's map into the context: the LLM's states at the L soft tokens
    handle = encoder.to_context.register_forward_pre_hook(lambda cell, args: seen.append(args[0].asnumpy()))
    try:
        loss, grads = ms.value_and_grad(loss_net, None, trainable)(*inputs)
        trainer.step_cell.optimizer(grads)  # the trainer's AdamW
    finally:
        handle.remove()
        set_execution_mode("graph")
    grads = {p.name: g.asnumpy() for p, g in zip(trainable, grads)}
    hidden = seen[0]
    assert hidden.shape == (len(rows), trainer.cfg.models.soft_preference.num_mm_tokens, encoder.hidden_size)

    pipe, reference = tiny.pipe, diffusers_scheduler(tiny)
    w, b = (torch.tensor(a, requires_grad=True) for a in (weight, bias))
    soft = torch.tensor(hidden) @ w.T + b
    context = torch.cat([torch.tensor(target_ctx), torch.tensor(pref_ctx), soft], dim=1)  # weights 1, 1, 1
    x, n, t = torch.tensor(latents), torch.tensor(noise), torch.tensor(timesteps, dtype=torch.long)
    pred = pipe.unet(reference.add_noise(x, n, t), t, context).sample
    ref_loss = torch.nn.functional.mse_loss(pred, reference.get_velocity(x, n, t))
    ref_grads = [g.numpy().astype(np.float64) for g in torch.autograd.grad(ref_loss, [w, b])]

    got = [grads[encoder.to_context.weight.name], grads[encoder.to_context.bias.name]]
    scale = max(float(np.abs(g).max()) for g in ref_grads)
    diffs = [float(np.abs(a - r).max()) for a, r in zip(got, ref_grads)]
    print(f"loss {float(loss.asnumpy()):.6f} vs {ref_loss.item():.6f}; to_context grad max abs diff "
          f"{max(diffs):.1e} (largest entry {scale:.1e})")
    np.testing.assert_allclose(float(loss.asnumpy()), ref_loss.item(), rtol=1e-5)
    assert max(diffs) < 1e-4 * scale, diffs

    lr = float(learning_rates(trainer.cfg.train)[0])
    expected = NumpyAdamW([weight, bias]).step(ref_grads, lr=lr)
    after = [encoder.to_context.weight.asnumpy(), encoder.to_context.bias.asnumpy()]
    for got_param, want, old in zip(after, expected, (weight, bias)):
        moved = np.abs(want - old)
        print(f"to_context update: median {np.median(moved):.1e}; max abs diff to NumPy AdamW "
              f"{np.abs(got_param - want).max():.1e}")
        np.testing.assert_allclose(got_param, want, rtol=0, atol=2e-6)
    for param in trainable:  # the soft tokens and the prefix learn too
        assert not np.array_equal(param.asnumpy(), before[param.name]), param.name
