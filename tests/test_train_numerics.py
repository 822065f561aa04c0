"""build_train_step's numerics against NumPy: gradient accumulation, global-norm clipping, loss scaling.

Every test trains a tiny linear model with an MSE loss (float32, fixed data) through the real step cell and
compares the parameters after an optimizer step with MindSpore's AdamWeightDecay computed in NumPy (float64).

Adam hides the scale of a gradient: with g >> eps its update is about ``sign(g)``, so dividing by the wrong
accumulation factor, clipping wrongly or forgetting to unscale would leave the parameters almost unchanged. The loss
is therefore multiplied by ``LOSS_FACTOR`` = 1e-6, which puts the gradients at the size of Adam's eps (1e-6): there
the first update ``0.1 g / (eps + sqrt(0.001) |g|)`` is close to linear in g, and a factor of 2 anywhere in the
gradient moves the parameters by about half an update (~1e-4 of a parameter), far beyond the 1e-6 tolerance.
"""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from research.pmg.config import TrainConfig
from research.pmg.train.step import build_train_step

IN_DIM, OUT_DIM = 4, 3
LOSS_FACTOR = 1e-6
LR, WEIGHT_DECAY = 1e-2, 0.01
BETA1, BETA2, EPS = 0.9, 0.999, 1e-6  # nn.AdamWeightDecay's defaults, which build_train_step keeps
RTOL, ATOL = 1e-6, 1e-7  # on parameters of size 0.1-1; one update is ~1e-3 of them


class LinearMSE(nn.Cell):
    """``LOSS_FACTOR * mean((x @ w.T + b - y) ** 2)``; x ``(batch, IN_DIM)``, y ``(batch, OUT_DIM)``."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        super().__init__()
        self.w = ms.Parameter(ms.Tensor(w, ms.float32), name="w")
        self.b = ms.Parameter(ms.Tensor(b, ms.float32), name="b")

    def construct(self, x, y):
        pred = ops.matmul(x, self.w.T) + self.b
        return LOSS_FACTOR * ((pred - y) ** 2).mean()


def initial_params():
    rng = np.random.default_rng(0)
    w = rng.uniform(0.2, 0.8, (OUT_DIM, IN_DIM)) * rng.choice([-1.0, 1.0], (OUT_DIM, IN_DIM))
    b = rng.uniform(0.2, 0.8, OUT_DIM)
    return w.astype(np.float32), b.astype(np.float32)


def batch(rows: int, seed: int):
    """Fixed data: x ``(rows, IN_DIM)``, y ``(rows, OUT_DIM)`` float32."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, IN_DIM)).astype(np.float32),
            rng.standard_normal((rows, OUT_DIM)).astype(np.float32))


def np_grads(params, x, y):
    """Gradients of LinearMSE's loss in float64: (dw ``(OUT_DIM, IN_DIM)``, db ``(OUT_DIM,)``)."""
    w, b = (p.astype(np.float64) for p in params)
    x, y = x.astype(np.float64), y.astype(np.float64)
    r = x @ w.T + b - y
    coef = LOSS_FACTOR * 2.0 / r.size
    return coef * r.T @ x, coef * r.sum(axis=0)


def global_norm(grads):
    return float(np.sqrt(sum((g ** 2).sum() for g in grads)))


class NumpyAdamW:
    """MindSpore's nn.AdamWeightDecay (mindspore/nn/optim/adam.py ``_update_run_op``): no bias correction, eps
    added to sqrt(v), weight decay added to the update before the learning rate multiplies it, every parameter
    decayed (none is named beta/gamma)."""

    def __init__(self, params):
        self.params = [p.astype(np.float64) for p in params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]

    def step(self, grads, lr=LR):
        for i, g in enumerate(grads):
            self.m[i] = BETA1 * self.m[i] + (1 - BETA1) * g
            self.v[i] = BETA2 * self.v[i] + (1 - BETA2) * g * g
            update = self.m[i] / (EPS + np.sqrt(self.v[i])) + WEIGHT_DECAY * self.params[i]
            self.params[i] = self.params[i] - lr * update
        return self.params


def train_config(**overrides) -> TrainConfig:
    """A constant learning rate (no warm-up, min_lr_ratio 1) so the NumPy reference needs no schedule."""
    fields = dict(lr=LR, weight_decay=WEIGHT_DECAY, max_steps=2000, warmup_steps=0, min_lr_ratio=1.0,
                  grad_accum_steps=1, grad_clip=0.0, loss_scale="none")
    cfg = TrainConfig(**{**fields, **overrides})
    cfg.validate("train")
    return cfg


def make_step(**overrides):
    net = LinearMSE(*initial_params())
    step, optimizer = build_train_step(net, train_config(**overrides), precision="fp32")
    return net, step, optimizer


def params_of(net):
    return [net.w.asnumpy().copy(), net.b.asnumpy().copy()]


def run(step, x, y):
    return step(ms.Tensor(x), ms.Tensor(y))


def assert_params(net, expected):
    for got, want in zip(params_of(net), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_grad_accumulation_matches_one_big_batch():
    """N equal micro-batches with grad_accum_steps=N update like one batch of their N x micro rows.

    Equal, not approximately equal: the step divides each micro-batch's loss by N before differentiating, so the
    accumulated gradient is the mean over micro-batches of per-micro-batch mean losses, which for equal-sized
    micro-batches is the mean over all rows: the gradient of the big batch's loss. Only float32 summation order
    differs. The optimizer must not move between micro-batches, and the accumulator must start from zero for the
    second optimizer step (two steps are compared).
    """
    n, micro = 4, 2
    big_net, big_step, _ = make_step(grad_accum_steps=1)
    acc_net, acc_step, _ = make_step(grad_accum_steps=n)
    reference = NumpyAdamW(initial_params())
    for opt_step in range(2):
        x, y = batch(n * micro, seed=10 + opt_step)
        run(big_step, x, y)
        before = params_of(acc_net)
        for k in range(n):
            rows = slice(k * micro, (k + 1) * micro)
            run(acc_step, x[rows], y[rows])
            if k < n - 1:  # no update until the N-th micro-batch
                for got, want in zip(params_of(acc_net), before):
                    np.testing.assert_array_equal(got, want)
        expected = reference.step(np_grads([p.astype(np.float32) for p in reference.params], x, y))
        assert_params(big_net, expected)
        assert_params(acc_net, expected)
        for got, want in zip(params_of(acc_net), params_of(big_net)):
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("clipped", [True, False])
def test_grad_clip_scales_by_the_global_norm(clipped):
    """grad_clip=c below the gradients' global norm: the update is AdamW's on g * c / max(norm, c), the norm taken
    over all trainable parameters together (w and b). A clip far above the norm changes nothing.

    The clip factor is visible in the parameters because the gradients sit at Adam's eps (module docstring): with
    c = norm / 4 the clipped first update is markedly smaller than the unclipped one. Clipping each parameter by
    its own norm would also differ, because b's gradient norm is not w's.
    """
    x, y = batch(8, seed=20)
    grads = np_grads(initial_params(), x, y)
    norm = global_norm(grads)
    clip = norm / 4 if clipped else norm * 1e3
    net, step, _ = make_step(grad_clip=clip)
    run(step, x, y)
    applied = [g * clip / max(norm, clip) for g in grads]
    assert_params(net, NumpyAdamW(initial_params()).step(applied))
    if clipped:  # the reference must tell global clipping from none and from per-parameter clipping
        unclipped = NumpyAdamW(initial_params()).step(grads)
        per_parameter = NumpyAdamW(initial_params()).step([g * clip / max(global_norm([g]), clip) for g in grads])
        for other in (unclipped, per_parameter):
            assert not all(np.allclose(got, want, rtol=RTOL, atol=ATOL) for got, want in zip(params_of(net), other))


@pytest.mark.parametrize("loss_scale, scale", [("static", 1024.0), ("dynamic", 65536.0)])
def test_loss_scale_cancels_on_finite_gradients(loss_scale, scale):
    """With finite gradients a loss scale S changes nothing: the loss is multiplied by S before differentiating and
    the gradients divided by S before clipping and the optimizer. The clip sits at 8x the true gradient norm, so it
    never acts on unscaled gradients but would on gradients still multiplied by S (S >= 1024). The logged loss ([1])
    is the unscaled loss; [0] is the scaled loss unscaled again. Two steps: the dynamic scale must not move after
    finite steps (its window is far away)."""
    batches = [batch(8, seed=seed) for seed in (30, 31)]
    clip = 8 * max(global_norm(np_grads(initial_params(), x, y)) for x, y in batches)
    net, step, _ = make_step(loss_scale=loss_scale, initial_loss_scale=scale, grad_clip=clip)
    reference = NumpyAdamW(initial_params())
    for x, y in batches:
        w, b = (p.astype(np.float64) for p in params_of(net))
        want_loss = LOSS_FACTOR * ((x @ w.T + b - y) ** 2).mean()
        scaled_loss, loss = run(step, x, y)
        np.testing.assert_allclose(float(loss.asnumpy()), want_loss, rtol=1e-5)
        np.testing.assert_allclose(float(scaled_loss.asnumpy()), want_loss, rtol=1e-5)
        grads = np_grads([p.astype(np.float32) for p in reference.params], x, y)
        assert_params(net, reference.step(grads))
    assert float(step.grad_scaler.loss_scaler.scale_value.asnumpy()) == scale


def overflow_batch():
    """A batch whose gradients are not finite in float32: inputs of 1e30 make residuals of ~1e30, and the weight
    gradient (residual x input) ~1e60 overflows. (Inputs of 1e20 would not do: the loss is inf, but the gradients,
    ~1e36, are still finite.)"""
    x, y = batch(8, seed=40)
    return np.full_like(x, 1e30), y


def optimizer_state(optimizer):
    return ([p.asnumpy().copy() for p in optimizer.moments1] + [p.asnumpy().copy() for p in optimizer.moments2]
            + [optimizer.global_step.asnumpy().copy()])


def assert_same(arrays, expected):
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("loss_scale", ["static", "dynamic"])
def test_overflow_skips_the_update(loss_scale):
    """Gradients that are not finite skip the optimizer step: parameters, Adam moments and the optimizer's step
    counter (which indexes the learning-rate schedule) stay exactly as they were, and the next finite batch updates
    as if the overflowing batch had never been seen (NumPy AdamW: two steps from the initial state).

    build_train_step's docstring promises "loss scaling with overflow skip" for any loss scale; a static scale that
    let a non-finite gradient through would write NaN into the trainable parameters."""
    net, step, optimizer = make_step(loss_scale=loss_scale, initial_loss_scale=1024.0)
    x, y = batch(8, seed=41)
    run(step, x, y)  # one good step first, so that the moments are not all zero
    params, state = params_of(net), optimizer_state(optimizer)
    run(step, *overflow_batch())
    assert_same(params_of(net), params)
    assert_same(optimizer_state(optimizer), state)
    x2, y2 = batch(8, seed=42)
    reference = NumpyAdamW(initial_params())
    reference.step(np_grads(initial_params(), x, y))
    expected = reference.step(np_grads(params, x2, y2))
    run(step, x2, y2)
    assert_params(net, expected)


def test_dynamic_loss_scale_halves_on_overflow_and_doubles_after_its_window():
    """MindSpore's DynamicLossScaler as build_train_step configures it (factor 2, window 1000): an overflow halves
    the scale and restarts the count of good steps; the 1000th consecutive finite step doubles it, not the 999th.
    The scale is read from the step cell's loss-scale parameter."""
    initial, window = 1024.0, 1000
    _, step, _ = make_step(loss_scale="dynamic", initial_loss_scale=initial)
    scale = step.grad_scaler.loss_scaler.scale_value
    x, y = batch(8, seed=50)
    for _ in range(3):  # good steps before the overflow do not count afterwards
        run(step, x, y)
    run(step, *overflow_batch())
    assert float(scale.asnumpy()) == initial / 2
    run(step, *overflow_batch())
    assert float(scale.asnumpy()) == initial / 4
    xt, yt = ms.Tensor(x), ms.Tensor(y)
    for _ in range(window - 1):
        step(xt, yt)
    assert float(scale.asnumpy()) == initial / 4
    step(xt, yt)
    assert float(scale.asnumpy()) == initial / 2
