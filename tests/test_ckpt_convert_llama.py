"""ckpt_convert llama: HF LlamaForCausalLM <-> MindFormers, proven by logits parity and a bit-exact round trip."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import mindspore as ms

from ckpt_convert import ConversionError, llama
from ckpt_convert.__main__ import main
from ckpt_convert.sources import read_hf_weights, read_mindspore_ckpt
from ckpt_convert.targets import checksum
from research.pmg.config import load_config
from research.pmg.models import build_llm
from research.pmg.runtime import set_execution_mode
from tests.hf_tiny_models import LLAMA_ARCH, save_llama, shard_files, truncate
from tests.tiny_models import REPO, TINY_CONFIG, random_ids

BATCH = 2


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory):
    """A sharded fp32 HF Llama folder and the PyTorch model it holds."""
    folder = tmp_path_factory.mktemp("hf-llama")
    model = save_llama(folder)
    assert len(shard_files(folder)) > 1 and (folder / "model.safetensors.index.json").is_file()
    return folder, model


@pytest.fixture(scope="module")
def converted(hf_llama, tmp_path_factory):
    """The CLI's MindFormers checkpoint of ``hf_llama`` and its config section."""
    folder, _ = hf_llama
    dst = tmp_path_factory.mktemp("mf-llama") / "llama.ckpt"
    assert main(["llama", "--src", str(folder), "--dst", str(dst)]) == 0
    return dst, dst.with_suffix(".yaml")


@pytest.fixture
def pynative(runtime):
    set_execution_mode("pynative")  # one forward pass each: compiling a graph would cost more than it saves
    yield
    set_execution_mode("graph")


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def _config_from_sidecar(sidecar, runtime, tmp_path):
    """The PMG config a user gets by pasting the converter's config section into a config based on tiny.yaml."""
    config = tmp_path / f"{sidecar.stem}-config.yaml"
    section = yaml.safe_load(sidecar.read_text())
    config.write_text(yaml.safe_dump({"base": str(TINY_CONFIG), "runtime": {"output_dir": str(runtime.output_dir)},
                                      **section}))
    return load_config(config)


# ---------------------------------------------------------------------------------------------------------------------
# The parameter lists the converter derives from config.json are the real models' lists
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qkv_concat", [False, True])
def test_mindformers_parameters_match_the_model(hf_llama, runtime, qkv_concat):
    from mindformers import LlamaForCausalLM
    from mindspore.nn.utils import no_init_parameters

    from research.pmg.models.llama import llama_config

    arch, _ = llama.read_arch(hf_llama[0])
    cfg = load_config(TINY_CONFIG, ["models.llm.n_kv_heads=2"]).models.llm
    mf_cfg = llama_config(cfg, runtime)
    mf_cfg.qkv_concat = qkv_concat
    with no_init_parameters():
        model = LlamaForCausalLM(mf_cfg)
    assert llama.mindformers_parameters(arch, qkv_concat) == {p.name: tuple(p.shape) for p in model.get_parameters()}


def test_names_and_fused_layouts_agree_with_mindformers(hf_llama):
    from mindformers import LlamaForCausalLM
    from mindformers.utils.convert_utils import ffn_concat_hf2mg, qkv_concat_hf2mg

    arch, _ = llama.read_arch(hf_llama[0])
    for pair in llama._pairs(arch, qkv_concat=False):
        assert [LlamaForCausalLM.convert_name(name) for name, _ in pair.hf] == [pair.mf]
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in ((64, 64), (32, 64), (32, 64)))
    fused = llama._qkv_concat(arch)[0](q, k, v)
    assert np.array_equal(fused, qkv_concat_hf2mg(np.concatenate([q, k, v]), 4, 2, 64))
    assert all(np.array_equal(llama._qkv_concat(arch)[1](i)(fused), w) for i, w in enumerate((q, k, v)))
    gate, up = (rng.standard_normal((128, 64)).astype(np.float32) for _ in range(2))
    fused = llama._ffn_concat(arch)[0](gate, up)
    assert np.array_equal(fused, ffn_concat_hf2mg(np.concatenate([gate, up]), 128))
    assert all(np.array_equal(llama._ffn_concat(arch)[1](i)(fused), w) for i, w in enumerate((gate, up)))


def test_hf_parameters_match_transformers(hf_llama):
    arch, _ = llama.read_arch(hf_llama[0])
    state = hf_llama[1].state_dict()
    assert llama.hf_parameters(arch) == {name: tuple(t.shape) for name, t in state.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Parity through the project's factory
# ---------------------------------------------------------------------------------------------------------------------
def test_converted_logits_equal_hf(hf_llama, converted, runtime, pynative, tmp_path):
    _, model = hf_llama
    ckpt, sidecar = converted
    cfg = _config_from_sidecar(sidecar, runtime, tmp_path)
    assert cfg.models.llm.checkpoint == str(ckpt) and cfg.models.llm.n_kv_heads == 2
    assert cfg.models.llm.rms_norm_eps == 1e-6 and cfg.models.llm.rope_theta == 5e5
    llm = build_llm(cfg, runtime, batch_size=BATCH)
    llm.set_train(False)
    ids = random_ids(np.random.default_rng(0), BATCH, cfg.models.llm.seq_length, cfg.models.llm.vocab_size)
    logits = llm(ms.Tensor(ids))[0].asnumpy().reshape(BATCH, cfg.models.llm.seq_length, -1)
    diff = np.abs(logits - _hf_logits(model, ids)).max()
    print(f"llama logits max abs diff: {diff:.2e}")
    assert diff < 1e-4


def test_qkv_concat_logits_equal_hf(hf_llama, runtime, pynative, tmp_path):
    """The fused layout runs in MindFormers' qkv_concat model (PyNative: graph mode lacks the split kernel on CPU)."""
    from mindformers import LlamaForCausalLM

    from research.pmg.models.llama import llama_config
    from research.pmg.models.weights import load_checkpoint_into

    folder, model = hf_llama
    dst = tmp_path / "fused.ckpt"
    assert main(["llama", "--src", str(folder), "--dst", str(dst), "--qkv-concat"]) == 0
    cfg = _config_from_sidecar(dst.with_suffix(".yaml"), runtime, tmp_path).models.llm
    mf_cfg = llama_config(cfg, runtime, batch_size=BATCH)
    mf_cfg.qkv_concat = True
    llm = LlamaForCausalLM(mf_cfg)
    load_checkpoint_into(llm, dst, what="models.llm")
    llm.set_train(False)
    ids = random_ids(np.random.default_rng(1), BATCH, cfg.seq_length, cfg.vocab_size)
    logits = llm(ms.Tensor(ids))[0].asnumpy().reshape(BATCH, cfg.seq_length, -1)
    diff = np.abs(logits - _hf_logits(model, ids)).max()
    print(f"llama qkv_concat logits max abs diff: {diff:.2e}")
    assert diff < 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# Round trip and dtypes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qkv_concat", [False, True])
def test_round_trip_is_bit_identical_in_bf16(tmp_path, qkv_concat):
    source = tmp_path / "hf"
    save_llama(source, dtype=torch.bfloat16)
    ckpt, back = tmp_path / "llama.ckpt", tmp_path / "back"
    llama.convert(source, ckpt, qkv_concat=qkv_concat)
    assert {ref.dtype for ref in read_mindspore_ckpt(ckpt).values()} == {"BF16"}
    summary = llama.convert(ckpt, back, hf_config=source)
    original = read_hf_weights(source, "model", "pytorch_model", allow_pickle=False)
    assert summary.checksum == checksum(original) == checksum(read_hf_weights(back, "model", "pytorch_model",
                                                                              allow_pickle=False))
    assert (back / "tokenizer_config.json").exists() == (source / "tokenizer_config.json").exists()
    assert (back / "generation_config.json").is_file()


def test_round_trip_output_loads_in_transformers(hf_llama, converted, tmp_path):
    from transformers import LlamaForCausalLM

    folder, model = hf_llama
    back = tmp_path / "back"
    assert main(["llama", "--src", str(converted[0]), "--dst", str(back), "--hf-config", str(folder)]) == 0
    reloaded = LlamaForCausalLM.from_pretrained(back, local_files_only=True).eval()
    ids = random_ids(np.random.default_rng(2), 1, 16, LLAMA_ARCH["vocab_size"])
    assert np.array_equal(_hf_logits(reloaded, ids), _hf_logits(model, ids))


def test_dtype_conversion_and_mindspore_readback(hf_llama, tmp_path):
    folder, model = hf_llama
    dst = tmp_path / "half.ckpt"
    summary = llama.convert(folder, dst, dtype="fp16")
    assert summary.dtypes == {"fp16": summary.tensors} and summary.source_dtypes == {"fp32": summary.tensors}
    loaded = ms.load_checkpoint(str(dst), crc_check=True)  # MindSpore's own reader, CRC verified
    embed = model.model.embed_tokens.weight.detach().numpy().astype(np.float16)
    assert np.array_equal(loaded["model.tok_embeddings.embedding_weight"].asnumpy(), embed)


# ---------------------------------------------------------------------------------------------------------------------
# Refusals: each a clear error, no output left behind
# ---------------------------------------------------------------------------------------------------------------------
def _copy(folder, dst):
    import shutil

    shutil.copytree(folder, dst)
    return dst


def _assert_nothing_written(out_dir):
    assert list(out_dir.iterdir()) == [], f"left behind: {list(out_dir.iterdir())}"


def test_missing_shard(hf_llama, tmp_path):
    src = _copy(hf_llama[0], tmp_path / "src")
    shard_files(src)[1].unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match=r"missing shard: .*model-00002-of-\d+\.safetensors"):
        llama.convert(src, out / "llama.ckpt")
    _assert_nothing_written(out)


def test_truncated_shard(hf_llama, tmp_path):
    src = _copy(hf_llama[0], tmp_path / "src")
    shard = shard_files(src)[-1]
    truncate(shard)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match=rf"{shard.name}: truncated"):
        llama.convert(src, out / "llama.ckpt")
    _assert_nothing_written(out)


def test_wrong_architecture(hf_llama, tmp_path):
    src = _copy(hf_llama[0], tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="wrong architecture: model_type 'gpt2'"):
        llama.convert(src, out / "llama.ckpt")
    # A config that does not fit the weights: every mis-shaped and missing tensor is named.
    (src / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 4, "num_hidden_layers": 3}))
    with pytest.raises(ConversionError) as err:
        llama.convert(src, out / "llama.ckpt")
    message = str(err.value)
    assert "mis-shaped (4): model.layers.0.self_attn.k_proj.weight (file [32, 64], expected [64, 64])" in message
    assert "missing in the source (9): model.layers.2." in message
    _assert_nothing_written(out)


def test_unknown_tensors_are_named(hf_llama, tmp_path):
    from safetensors.numpy import save_file

    src = _copy(hf_llama[0], tmp_path / "src")
    for shard in shard_files(src):
        shard.unlink()
    (src / "model.safetensors.index.json").unlink()
    weights = {name: t.numpy() for name, t in hf_llama[1].state_dict().items()}
    weights["model.layers.0.self_attn.q_proj.lora_A.weight"] = np.zeros((4, 64), np.float32)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"unknown \(not part of this model\) \(1\): "
                                              r"model.layers.0.self_attn.q_proj.lora_A.weight"):
        llama.convert(src, tmp_path / "llama.ckpt")


def test_pickle_needs_the_flag(hf_llama, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes((hf_llama[0] / "config.json").read_bytes())
    torch.save(hf_llama[1].state_dict(), src / "pytorch_model.bin")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match="pickle-based PyTorch file.*arbitrary code.*--allow-pickle"):
        llama.convert(src, out / "llama.ckpt")
    _assert_nothing_written(out)
    summary = llama.convert(src, out / "llama.ckpt", allow_pickle=True)
    assert summary.tensors == len(llama.mindformers_parameters(llama.read_arch(src)[0]))


def test_reverse_needs_the_hf_config(converted, tmp_path):
    with pytest.raises(ConversionError, match="needs --hf-config"):
        llama.convert(converted[0], tmp_path / "back")


def test_cli_refuses_pickle_without_importing_torch(hf_llama, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "config.json").write_bytes((hf_llama[0] / "config.json").read_bytes())
    torch.save(hf_llama[1].state_dict(), src / "pytorch_model.bin")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "ckpt_convert", "llama", "--src", str(src),
                             "--dst", str(out / "llama.ckpt")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(messages) == 1 and messages[0].startswith("error: ") and "arbitrary code" in messages[0]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" not in imported and "mindformers" not in imported
    assert list(out.iterdir()) == []
