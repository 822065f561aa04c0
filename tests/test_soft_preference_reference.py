"""The soft preference embedding E_m (research/pmg/models/soft_preference.py) against a PyTorch reference.

The reference is transformers' ``LlamaModel`` with the same weights (an HF checkpoint converted by ckpt_convert),
run one prompt at a time with no padding at all: the prompt's tokens, then the L multimodal tokens, at positions
0 .. n + L - 1, and the P-Tuning v2 prefix given as each layer's past keys and values (keys without rotary
position, as MindFormers concatenates them). E_m is the map of the last L hidden states. The MindSpore encoder
gets the same prompts right-padded in one batch, with a trained-size (non-zero) prefix.
"""
import numpy as np
import pytest
import torch

import mindspore as ms

from ckpt_convert.__main__ import main as convert
from research.pmg.config import load_config
from research.pmg.models import build_llm
from research.pmg.runtime import set_execution_mode
from tests.hf_tiny_models import save_llama
from tests.tiny_models import TINY_CONFIG

WIDTH = 36  # prompt width; the LLM's sequence is WIDTH + L
LENGTHS = (7, 20, WIDTH)  # real tokens per prompt: short, middle, no padding at all
CTX = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory, runtime):
    """(MindSpore encoder, PyTorch LlamaModel, soft-preference config) with the same weights."""
    from research.pmg.models.soft_preference import SoftPreferenceEncoder

    folder = tmp_path_factory.mktemp("hf-llama")
    hf = save_llama(folder)
    dst = tmp_path_factory.mktemp("mf-llama") / "llama.ckpt"
    assert convert(["llama", "--src", str(folder), "--dst", str(dst)]) == 0
    cfg = load_config(TINY_CONFIG, [f"runtime.output_dir={runtime.output_dir}", f"models.llm.checkpoint={dst}",
                                    "models.llm.n_kv_heads=2", "models.llm.rms_norm_eps=1e-6",
                                    "models.llm.rope_theta=500000.0"])
    soft = cfg.models.soft_preference
    llm = type(cfg.models.llm)(**{**cfg.models.llm.__dict__, "seq_length": WIDTH + soft.num_mm_tokens})
    cfg = type(cfg)(**{**cfg.__dict__, "models": type(cfg.models)(**{**cfg.models.__dict__, "llm": llm})})
    encoder = SoftPreferenceEncoder(build_llm(cfg, runtime, batch_size=len(LENGTHS)), llm, soft, ctx_dim=CTX)
    rng = np.random.default_rng(0)
    for param in encoder.trainable_params():  # trained-size values everywhere, the prefix included
        param.set_data(ms.Tensor(rng.normal(0, 0.1, param.shape).astype(np.float32)))
    encoder.set_train(False)
    return encoder, hf.model, llm, soft


def _prompts(llm):
    """Right-padded ids ``(3, WIDTH)``, BOS first, and each row's real tokens."""
    rng = np.random.default_rng(1)
    ids = np.full((len(LENGTHS), WIDTH), llm.pad_token_id, np.int32)
    rows = []
    for row, n in enumerate(LENGTHS):
        tokens = np.concatenate([[llm.bos_token_id], rng.integers(3, llm.vocab_size, n - 1)]).astype(np.int32)
        ids[row, :n] = tokens
        rows.append(tokens)
    return ids, rows


def _reference(hf_llama, encoder, llm, soft, tokens) -> np.ndarray:
    """E_m ``(L, CTX)`` of one unpadded prompt in PyTorch."""
    from transformers import DynamicCache

    params = {p.name: torch.from_numpy(p.asnumpy().astype(np.float32)) for p in encoder.trainable_params()}
    (prefix,) = [v for k, v in params.items() if k.startswith("prefix_encoder.")]
    mm = params["mm_tokens"]
    weight, bias = params["to_context.weight"], params["to_context.bias"]
    kv_heads, head_dim = llm.n_kv_heads or llm.num_heads, llm.hidden_size // llm.num_heads
    # MindFormers' Ptuning2Encoder layout: (S, layers * 2 * kv_heads * head_dim), keys and values per layer in turn
    kv = prefix.reshape(1, soft.prefix_len, 2 * llm.num_layers, kv_heads, head_dim).permute(2, 0, 3, 1, 4)
    cache = DynamicCache()
    for layer in range(llm.num_layers):
        cache.update(kv[2 * layer], kv[2 * layer + 1], layer)
    n = len(tokens)
    with torch.no_grad():
        embeds = torch.cat((hf_llama.embed_tokens(torch.tensor(tokens[None], dtype=torch.long)), mm[None]), 1)
        hidden = hf_llama(inputs_embeds=embeds, past_key_values=cache, use_cache=True,
                          attention_mask=torch.ones(1, soft.prefix_len + n + soft.num_mm_tokens, dtype=torch.long),
                          position_ids=torch.arange(n + soft.num_mm_tokens)[None]).last_hidden_state
        return (hidden[0, -soft.num_mm_tokens:] @ weight.T + bias).numpy()


def test_soft_embedding_equals_pytorch_on_unpadded_prompts(models, runtime):
    """Each row of the right-padded batch equals the reference of its prompt alone (max |diff| ~1e-6 at values
    ~1; checked at 1e-5): the L tokens sit right after each row's own text, whatever its padding."""
    encoder, hf_llama, llm, soft = models
    ids, rows = _prompts(llm)
    set_execution_mode("pynative")
    try:
        got = encoder(ms.Tensor(ids)).asnumpy()
    finally:
        set_execution_mode("graph")
    expected = np.stack([_reference(hf_llama, encoder, llm, soft, tokens) for tokens in rows])
    diff = np.abs(got - expected).max()
    print(f"soft embedding vs PyTorch: max |diff| {diff:.2e}, values up to {np.abs(expected).max():.2f}")
    assert got.shape == (len(LENGTHS), soft.num_mm_tokens, CTX)
    assert np.abs(expected).max() > 0.1 and np.abs(expected[0] - expected[1]).max() > 0.01  # a change would show
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
