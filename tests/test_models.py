"""Tiny versions of every model PMG uses run forward and backward on CPU, in PyNative and graph mode."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from research.pmg.models import build_llm
from research.pmg.models.llama import build_prefix_encoder
from research.pmg.models.weights import CheckpointError, load_checkpoint_into, save_checkpoint_of
from research.pmg.runtime import set_execution_mode
from tests.tiny_models import random_ids

BATCH = 2


class PrefixLlamaLoss(nn.Cell):
    """Frozen Llama with a trainable P-Tuning v2 prefix; loss = mean square of the last hidden states."""

    def __init__(self, llama, prefix):
        super().__init__()
        self.llama, self.prefix = llama, prefix

    def construct(self, ids):
        prefix_kv = self.prefix(ids.shape[0], ms.float32)
        hidden = self.llama.model(ids, None, None, None, None, None, None, prefix_kv)
        return (hidden ** 2).mean()


@pytest.fixture(scope="module")
def llama_and_prefix(tiny_cfg, runtime):
    from research.pmg.runtime import seed_everything

    seed_everything(tiny_cfg.runtime.seed)  # random-init weights: the same whatever ran before in the session
    llama = build_llm(tiny_cfg, runtime, batch_size=BATCH)
    prefix = build_prefix_encoder(tiny_cfg.models.llm, tiny_cfg.models.soft_preference)
    return llama, prefix


def test_built_llama_attends_with_the_cpu_attention(tiny_cfg, runtime, monkeypatch):
    """build_llm patches MindFormers' attention before building (research.pmg.compat.mint_cpu._llama_attn,
    checked against NumPy in tests/test_compat.py), so every Llama of a process computes it the same way."""
    from mindformers.models.llama.llama_transformer import LLamaAttention

    from research.pmg.compat import mint_cpu

    original = mint_cpu.originals().get("mindformers.models.llama.llama_transformer:LLamaAttention._attn",
                                        LLamaAttention._attn)
    monkeypatch.setattr(LLamaAttention, "_attn", original)  # as in a fresh process, whatever ran before here
    llama = build_llm(tiny_cfg, runtime, batch_size=BATCH)
    assert type(llama.model.layers[0].attention)._attn is mint_cpu._llama_attn


def _snapshot(cell):
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


def test_llama_prefix_step_updates_only_the_prefix(tiny_cfg, llama_and_prefix, mode):
    llama, prefix = llama_and_prefix
    llm_cfg = tiny_cfg.models.llm
    net = PrefixLlamaLoss(llama, prefix)
    ids = ms.Tensor(random_ids(np.random.default_rng(0), BATCH, llm_cfg.seq_length, llm_cfg.vocab_size))

    trainable = net.trainable_params()
    assert {p.name for p in trainable} == {p.name for p in prefix.trainable_params()}
    assert len(trainable) >= 1
    loss, grads = ms.value_and_grad(net, None, trainable)(ids)
    assert np.isfinite(float(loss))
    for param, grad in zip(trainable, grads):
        assert grad.shape == param.shape
        assert float(ops.abs(grad).sum()) > 0, f"no gradient reaches {param.name}"

    frozen_before, prefix_before = _snapshot(llama), _snapshot(prefix)
    step = nn.TrainOneStepCell(net, nn.AdamWeightDecay(trainable, learning_rate=1e-2))
    step(ids)
    frozen_after, prefix_after = _snapshot(llama), _snapshot(prefix)
    assert all(np.array_equal(frozen_before[k], frozen_after[k]) for k in frozen_before), "a frozen weight changed"
    changed = [k for k in prefix_before if not np.array_equal(prefix_before[k], prefix_after[k])]
    assert changed == [p.name for p in trainable]


def test_llama_prefix_shapes_and_effect(tiny_cfg, llama_and_prefix, runtime):
    llama, prefix = llama_and_prefix
    llm, soft = tiny_cfg.models.llm, tiny_cfg.models.soft_preference
    kv = prefix(BATCH, ms.float32)
    assert len(kv) == llm.num_layers
    assert kv[0].shape == (2, BATCH, soft.prefix_len, llm.hidden_size)
    ids = ms.Tensor(random_ids(np.random.default_rng(1), BATCH, llm.seq_length, llm.vocab_size))
    with_prefix = llama.model(ids, None, None, None, None, None, None, kv).asnumpy()
    without = llama.model(ids).asnumpy()
    assert with_prefix.shape == (BATCH, llm.seq_length, llm.hidden_size)
    assert np.abs(with_prefix - without).max() > 1e-4, "the prefix does not change the hidden states"


def test_llama_prefix_graph_equals_pynative(tiny_cfg, llama_and_prefix, runtime):
    llama, prefix = llama_and_prefix
    llm = tiny_cfg.models.llm
    ids = ms.Tensor(random_ids(np.random.default_rng(2), BATCH, llm.seq_length, llm.vocab_size))
    results = {}
    for mode in ("pynative", "graph"):
        set_execution_mode(mode)
        net = PrefixLlamaLoss(llama, prefix)
        loss, grads = ms.value_and_grad(net, None, net.trainable_params())(ids)
        results[mode] = (float(loss), [g.asnumpy() for g in grads])
    set_execution_mode("graph")
    assert results["graph"][0] == pytest.approx(results["pynative"][0], rel=1e-5)
    for g_graph, g_py in zip(results["graph"][1], results["pynative"][1]):
        np.testing.assert_allclose(g_graph, g_py, rtol=1e-4, atol=1e-7)


def test_prefix_projection_variant(tiny_cfg, llama_and_prefix, runtime):
    from dataclasses import replace

    llama, _ = llama_and_prefix
    llm = tiny_cfg.models.llm
    soft = replace(tiny_cfg.models.soft_preference, prefix_projection=True, projection_dim=16)
    prefix = build_prefix_encoder(llm, soft)
    assert all(p.dtype == ms.float32 for p in prefix.trainable_params())
    shapes = {p.name.replace("mindpet_delta_ptuning2_", ""): p.shape for p in prefix.trainable_params()}
    width = 2 * llm.num_layers * llm.hidden_size
    assert shapes == {"embedding.embedding_table": (soft.prefix_len, width), "trans.0.weight": (16, width),
                      "trans.0.bias": (16,), "trans.2.weight": (width, 16), "trans.2.bias": (width,)}
    net = PrefixLlamaLoss(llama, prefix)
    ids = ms.Tensor(random_ids(np.random.default_rng(3), BATCH, llm.seq_length, llm.vocab_size))
    _, grads = ms.value_and_grad(net, None, net.trainable_params())(ids)
    assert all(float(ops.abs(g).sum()) > 0 for g in grads)


class DiffusionLoss(nn.Cell):
    """The PMG training objective on tiny SD: encode, noise, predict, MSE, with a trainable context."""

    def __init__(self, parts, context):
        super().__init__()
        self.unet, self.vae = parts.unet, parts.vae
        self.context = context
        alphas = np.asarray(parts.scheduler.alphas_cumprod.asnumpy(), np.float32)
        self.alphas_cumprod = ms.Tensor(alphas)
        self.scaling = float(parts.vae.config.scaling_factor)

    def construct(self, images, noise, timesteps):
        moments = self.vae.encode(images)[0]
        latents = moments[:, : moments.shape[1] // 2] * self.scaling  # the mean: deterministic for the test
        a = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        noisy = ops.sqrt(a) * latents + ops.sqrt(1 - a) * noise
        context = ops.broadcast_to(self.context[None], (images.shape[0],) + self.context.shape)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=context)[0]
        return ((pred - noise) ** 2).mean()


def _diffusion_inputs(tiny_cfg, seed):
    rng = np.random.default_rng(seed)
    size = tiny_cfg.models.diffusion.vae["sample_size"]
    latent = tiny_cfg.models.diffusion.unet["sample_size"]
    images = ms.Tensor(rng.uniform(-1, 1, (BATCH, 3, size, size)).astype(np.float32))
    noise = ms.Tensor(rng.standard_normal((BATCH, 4, latent, latent)).astype(np.float32))
    timesteps = ms.Tensor(np.array([10, 700], np.int32))
    return images, noise, timesteps


def test_diffusion_train_step_in_both_modes(tiny_cfg, tiny_diffusion, mode):
    parts = tiny_diffusion
    ctx_dim = parts.cross_attention_dim
    assert ctx_dim == tiny_cfg.models.diffusion.unet["cross_attention_dim"]
    context = ms.Parameter(ms.Tensor(np.random.default_rng(0).normal(0, 1, (4, ctx_dim)).astype(np.float32)),
                           name="soft_context")
    net = DiffusionLoss(parts, context)
    assert [p.name for p in net.trainable_params()] == ["soft_context"]
    images, noise, timesteps = _diffusion_inputs(tiny_cfg, 0)
    frozen_before = _snapshot(parts.unet)
    loss, (grad,) = ms.value_and_grad(net, None, net.trainable_params())(images, noise, timesteps)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert grad.shape == (4, ctx_dim) and float(ops.abs(grad).sum()) > 0
    step = nn.TrainOneStepCell(net, nn.SGD(net.trainable_params(), learning_rate=0.1))
    step(images, noise, timesteps)
    assert all(np.array_equal(v, p.asnumpy()) for v, p in zip(frozen_before.values(), parts.unet.get_parameters()))


def test_diffusion_loss_graph_equals_pynative(tiny_cfg, tiny_diffusion, runtime):
    context = ms.Parameter(ms.Tensor(np.ones((4, tiny_diffusion.cross_attention_dim), np.float32)), name="ctx")
    inputs = _diffusion_inputs(tiny_cfg, 1)
    losses = {}
    for mode in ("pynative", "graph"):
        set_execution_mode(mode)
        losses[mode] = float(DiffusionLoss(tiny_diffusion, context)(*inputs))
    set_execution_mode("graph")
    assert losses["graph"] == pytest.approx(losses["pynative"], rel=1e-5)


def test_vae_round_trip_shapes_and_scheduler_step(tiny_cfg, tiny_diffusion, mode):
    parts = tiny_diffusion
    images, noise, _ = _diffusion_inputs(tiny_cfg, 2)
    size = images.shape[-1]
    moments = parts.vae.encode(images)[0]
    latents = parts.vae.diag_gauss_dist.sample(moments)
    factor = 2 ** (len(tiny_cfg.models.diffusion.vae["block_out_channels"]) - 1)
    assert latents.shape == (BATCH, 4, size // factor, size // factor)
    decoded = parts.vae.decode(latents)[0]
    assert decoded.shape == images.shape

    from research.pmg.config import SchedulerConfig
    from research.pmg.models.diffusion import build_scheduler

    ddim = build_scheduler(SchedulerConfig(name="ddim"))
    ddim.set_timesteps(10)
    t, t_prev = (int(x) for x in ddim.timesteps.asnumpy()[:2])
    assert (t, t_prev) == (901, 801)  # SD's DDIM: 10 steps, offset 1
    sample = ms.Tensor(np.random.default_rng(3).standard_normal(tuple(noise.shape)).astype(np.float32) * 5)
    out = ddim.step(noise, ddim.timesteps[0], sample)[0]
    # DDIM, eta 0, epsilon prediction, no clipping: x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps
    acp = ddim.alphas_cumprod.asnumpy()
    a_t, a_prev = acp[t], acp[t_prev]
    eps, x = noise.asnumpy(), sample.asnumpy()
    x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    np.testing.assert_allclose(out.asnumpy(), np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps, rtol=1e-4, atol=1e-5)


def test_sd_text_encoder_tokenizer_and_context_shape(tiny_cfg, tiny_diffusion, mode):
    parts = tiny_diffusion
    max_len = tiny_cfg.models.diffusion.tokenizer_max_length
    ids = parts.tokenizer(["a cute cat sticker", "red summer dress"], padding="max_length", max_length=max_len,
                          truncation=True, return_tensors="np").input_ids
    assert ids.shape == (2, max_len)
    hidden = parts.text_encoder(ms.Tensor(ids, ms.int32))[0]
    assert hidden.shape == (2, max_len, parts.cross_attention_dim)


def test_clip_features_in_both_modes(tiny_cfg, tiny_clip, mode):
    clip = tiny_clip
    proj = tiny_cfg.models.clip.projection_dim
    texts = ["a cute cat", "a red heart", "a bowl of noodles"]
    ids = clip.tokenizer(texts, padding="max_length", max_length=clip.tokenizer.model_max_length,
                         return_tensors="np").input_ids
    text = clip.model.get_text_features(ms.Tensor(ids, ms.int32))
    pixels = ms.Tensor(np.random.default_rng(4).standard_normal((2, 3, clip.image_size, clip.image_size))
                       .astype(np.float32))
    image = clip.model.get_image_features(pixels)
    assert text.shape == (3, proj) and image.shape == (2, proj)
    out = clip.model(input_ids=ms.Tensor(ids, ms.int32), pixel_values=pixels)
    logits_per_image = out[0].asnumpy()
    t, i = text.asnumpy(), image.asnumpy()
    cos = (i / np.linalg.norm(i, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    scale = float(np.exp(clip.model.logit_scale.asnumpy()))
    np.testing.assert_allclose(logits_per_image, scale * cos, rtol=1e-4, atol=1e-5)


def test_llama_checkpoint_round_trip_and_errors(tiny_cfg, runtime, llama_and_prefix, tmp_path):
    from dataclasses import replace

    llama, _ = llama_and_prefix
    path = tmp_path / "tiny_llama.ckpt"
    PrefixLlamaLoss(llama, build_prefix_encoder(tiny_cfg.models.llm, tiny_cfg.models.soft_preference))
    assert next(llama.get_parameters()).name.startswith("llama."), "wrapping renames parameters in MindSpore"
    save_checkpoint_of(llama, path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny_llama.ckpt"]
    fresh = build_llm(tiny_cfg, runtime, batch_size=BATCH)
    load_checkpoint_into(fresh, path, what="models.llm")
    for (name_a, a), (name_b, b) in zip(llama.parameters_and_names(), fresh.parameters_and_names()):
        assert name_a == name_b and np.array_equal(a.asnumpy(), b.asnumpy())

    wider_cfg = replace(tiny_cfg.models, llm=replace(tiny_cfg.models.llm, intermediate_size=96))
    wider = build_llm(replace(tiny_cfg, models=wider_cfg), runtime, batch_size=BATCH)
    with pytest.raises(CheckpointError, match=r"mis-shaped.*feed_forward.*\(file \(128, 64\), model \(96, 64\)\)"):
        load_checkpoint_into(wider, path, what="models.llm")

    prefix = build_prefix_encoder(tiny_cfg.models.llm, tiny_cfg.models.soft_preference)
    with pytest.raises(CheckpointError, match=r"tiny_llama\.ckpt does not match the model; missing \(2\).*unexpected"):
        load_checkpoint_into(prefix, path, what="prefix")

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt cannot be read"):
        load_checkpoint_into(fresh, truncated, what="models.llm")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint_into(fresh, tmp_path / "absent.ckpt", what="models.llm")


# ---------------------------------------------------------------------------------------------------------------------
# The soft preference embedding of a prompt does not depend on its padding or on the other rows of its batch
# ---------------------------------------------------------------------------------------------------------------------
SOFT_SEQ = (128, 160)  # LLM sequence lengths: prompts padded to P = 124 and to 156 (configs/tiny.yaml's 512 is slower)
SOFT_ATOL = 1e-5  # embeddings of size ~1.6; measured 2.4e-7 between widths (1.2e-7 with prefix std 0.1), 0 between rows


@pytest.fixture(scope="module")
def soft_encoders(tiny_cfg, runtime, tiny_tokenizers):
    """Two soft-preference encoders with the same weights, for prompts of P = 124 and 156 tokens, and two history
    prompts as training renders them (65 and 89 tokens with the tiny tokenizer)."""
    from dataclasses import replace

    from research.pmg.examples import render_history_prompt
    from research.pmg.models.soft_preference import SoftPreferenceEncoder
    from research.pmg.models.tokenizers import load_llama_tokenizer
    from research.pmg.runtime import seed_everything

    encoders = []
    for seq_length in SOFT_SEQ:
        llm = replace(tiny_cfg.models.llm, seq_length=seq_length)
        seed_everything(tiny_cfg.runtime.seed)
        llama = build_llm(replace(tiny_cfg, models=replace(tiny_cfg.models, llm=llm)), runtime, batch_size=BATCH)
        encoders.append(SoftPreferenceEncoder(llama, llm, tiny_cfg.models.soft_preference, ctx_dim=32))
    first = {p.name: p for p in encoders[0].get_parameters()}
    for param in encoders[1].get_parameters():  # every weight, frozen or not, is the first encoder's
        param.set_data(first[param.name].data.copy())
    tokenizer = load_llama_tokenizer(tiny_tokenizers.llm)
    prompts = [render_history_prompt(["grinning cat face", "red heart"]),
               render_history_prompt(["grinning cat face", "red heart", "pizza", "sun behind cloud", "cat face"])]
    return encoders, tokenizer, prompts


def _embed(encoders, which, tokenizer, prompts, pad_id, width=None):
    """Right-padded ids ``(n, P)`` as training makes them (P: ``width``, else SOFT_SEQ[which] less the L tokens) and
    their soft embeddings ``(n, L, 32)`` by encoder ``which``."""
    from research.pmg.examples import tokenize_prompts

    encoder = encoders[which]
    ids = tokenize_prompts(tokenizer, prompts, width or SOFT_SEQ[which] - encoder.num_mm_tokens, pad_id)
    return ids, encoder(ms.Tensor(ids)).asnumpy()


def _set_prefix(encoders, values):
    for encoder in encoders:
        (table,) = encoder.prefix_encoder.trainable_params()
        table.set_data(ms.Tensor(values(table.shape).astype(np.float32)))


@pytest.mark.parametrize("prefix_std", [0.0, 0.1])
def test_soft_embedding_ignores_padding_and_batch_neighbours(tiny_cfg, soft_encoders, prefix_std):
    """A prompt's soft embedding is the same unpadded, padded to P = 124 or to 156, and alone or beside a longer
    prompt, with a zero prefix and with a trained-size one (std 0.1): the L tokens follow each row's own text, so
    its text and tokens keep positions 0 .. n + L - 1, and causal attention keeps the pads after them unseen. (With
    left padding a trained prefix gave 2.6e-4 between the widths: the prefix keys carry no rotary position.)"""
    encoders, tokenizer, prompts = soft_encoders
    pad = tiny_cfg.models.llm.pad_token_id
    table = np.random.default_rng(0).normal(0, prefix_std, encoders[0].prefix_encoder.trainable_params()[0].shape)
    _set_prefix(encoders, lambda shape: table)
    set_execution_mode("pynative")  # one forward each: cheaper than compiling five graphs
    try:
        ids_p, short_p = _embed(encoders, 0, tokenizer, prompts[:1], pad)
        n = int((ids_p[0] != pad).sum())
        ids_bare, bare = _embed(encoders, 0, tokenizer, prompts[:1], pad, width=n)
        ids_long, short_long = _embed(encoders, 1, tokenizer, prompts[:1], pad)
        ids_pair, pair = _embed(encoders, 0, tokenizer, prompts, pad)
    finally:
        set_execution_mode("graph")
    assert (ids_bare[0] != pad).all() and np.array_equal(ids_p[0, :n], ids_bare[0])
    assert np.array_equal(ids_long[0], np.concatenate([ids_p[0], np.full(SOFT_SEQ[1] - SOFT_SEQ[0], pad)]))
    assert (ids_pair[1] != pad).sum() > n and np.array_equal(ids_pair[0], ids_p[0])
    assert short_p.shape == (1, tiny_cfg.models.soft_preference.num_mm_tokens, 32)
    np.testing.assert_allclose(short_p, bare, rtol=0, atol=SOFT_ATOL)  # padded to 124 or not padded at all
    np.testing.assert_allclose(short_long, bare, rtol=0, atol=SOFT_ATOL)  # padded to 156
    np.testing.assert_allclose(pair[:1], short_p, rtol=0, atol=SOFT_ATOL)  # alone or beside a longer prompt
    assert np.abs(pair[1] - pair[0]).max() > 0.05  # the prompts' embeddings differ: the test can see a change


# ---------------------------------------------------------------------------------------------------------------------
# Ascend paths checked on CPU: flash attention with a prefix, the paged KV cache, recompute
# ---------------------------------------------------------------------------------------------------------------------
def _flash_runtime(runtime):
    """The runtime as a 910B would resolve it (flash attention on), for building, not running, the Ascend graph."""
    from dataclasses import replace

    return replace(runtime, flash_attention=True)


def test_prefix_model_with_flash_attention_computes_ordinary_prefix_attention(tiny_cfg, runtime):
    """MindFormers builds FlashAttentionScore(sparse_mode=0, next_tokens=0) and puts the S prefix keys in front:
    counted from the top-left corner, that band hid each query's last S keys. The arguments and mask the project
    builds, run through a NumPy model of the kernel, must equal ordinary prefix attention with either corner."""
    from dataclasses import replace

    from research.pmg.models.soft_preference import SoftPreferenceEncoder
    from research.pmg.selftest.attention import band_errors, flash_args

    llm, soft = tiny_cfg.models.llm, tiny_cfg.models.soft_preference
    S, L = soft.prefix_len, 16
    llm_short = replace(llm, seq_length=L)
    short = replace(tiny_cfg, models=replace(tiny_cfg.models, llm=llm_short))
    llama = build_llm(short, _flash_runtime(runtime), batch_size=BATCH)
    before = flash_args(llama)
    assert {a.next_tokens for a in before} == {0}, "MindFormers' own band changed: re-read its source"
    SoftPreferenceEncoder(llama, llm_short, soft, ctx_dim=32)
    after = flash_args(llama)
    assert len(after) == llm.num_layers and {a.next_tokens for a in after} == {S}

    tokens = random_ids(np.random.default_rng(0), BATCH, L, llm.vocab_size)
    tokens[1, -5:] = llm.pad_token_id  # right padding, as the soft-preference prompts have
    for corner, error in band_errors(llama, tokens, S, llm.pad_token_id, after[0]).items():
        assert error < 1e-12, f"band counted from the {corner} corner: {error}"
    # The defect this guards against: MindFormers' next_tokens = 0, counted from the top-left corner.
    assert band_errors(llama, tokens, S, llm.pad_token_id, before[0])["top_left"] > 0.1


def test_keyword_batch_16_at_seq_length_1024_fits_the_paged_kv_cache(tiny_cfg, runtime):
    """MindFormers' default pool (512 blocks x 16 tokens) refuses more than 8 rows of 1024 tokens."""
    from mindformers.modules.block_tables import BlockTables

    from research.pmg.models.llama import llama_config

    llm = type(tiny_cfg.models.llm)(**{**tiny_cfg.models.llm.__dict__, "seq_length": 1024})
    config = llama_config(llm, runtime, batch_size=16, use_past=True)
    def prefill_full_rows(num_blocks):  # what MindFormers' generate does first: a block table for every row
        tables = BlockTables(num_blocks, config.block_size, config.seq_length)
        tables.init_cache_engine(16)
        return tables.assemble_pa_full_inputs(1024, np.full(16, 1024, np.int32), [False] * 16)

    block_tables, slots = prefill_full_rows(config.num_blocks)
    assert block_tables.shape == (16, 1024 // 16) and slots.shape == (16 * 1024,)
    with pytest.raises(RuntimeError, match="block pool is out of memory"):  # MindFormers' default pool
        prefill_full_rows(512)
    assert llama_config(llm, runtime, batch_size=16, use_past=True, kv_blocks=2000).num_blocks == 2000
