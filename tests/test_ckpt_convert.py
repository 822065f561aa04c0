"""ckpt_convert's shared parts: torch-free readers that catch damaged files, MindSpore .ckpt codec, atomic output."""
import numpy as np
import pytest
import torch

import mindspore as ms

from ckpt_convert import ConversionError
from ckpt_convert.__main__ import main
from ckpt_convert.sources import cast, read_mindspore_ckpt, read_safetensors
from ckpt_convert.targets import Resolved, Summary, Target, atomic_outputs, resolve, write_mindspore_ckpt
from research.pmg.cli import USER_ERROR_EXIT, run
from tests.hf_tiny_models import truncate


def _edge_values() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1.0, -2.5, 1e-40, -1e-45, 3.0e38, 3.4028235e38, np.inf, -np.inf,
               1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-20]  # exact ties round to even; just above rounds up
    return np.concatenate([np.array(special, np.float32), rng.standard_normal(1000).astype(np.float32) * 100])


def test_bf16_matches_torch_bit_for_bit():
    values = _edge_values()
    ours = cast(values, "F32", "BF16")
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    back = cast(ours, "BF16", "F32")
    assert np.array_equal(back, torch.from_numpy(theirs.view(np.int16)).view(torch.bfloat16).float().numpy())
    assert np.isnan(cast(cast(np.array([np.nan], np.float32), "F32", "BF16"), "BF16", "F32")).all()
    with np.errstate(over="ignore"):
        assert np.array_equal(cast(ours, "BF16", "F16"), back.astype(np.float16))


def test_reads_safetensors_written_by_torch(tmp_path):
    from safetensors.torch import save_file

    tensors = {"bf16": torch.randn(3, 5).to(torch.bfloat16), "fp16": torch.randn(7).half(),
               "int": torch.arange(6).reshape(2, 3), "empty": torch.zeros(0, 4)}
    save_file(tensors, tmp_path / "t.safetensors")
    refs = read_safetensors(tmp_path / "t.safetensors")
    assert {name: (ref.dtype, ref.shape) for name, ref in refs.items()} == {
        "bf16": ("BF16", (3, 5)), "fp16": ("F16", (7,)), "int": ("I64", (2, 3)), "empty": ("F32", (0, 4))}
    assert np.array_equal(refs["bf16"].read(), tensors["bf16"].view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(refs["fp16"].read(), tensors["fp16"].numpy())
    assert np.array_equal(refs["int"].read(), tensors["int"].numpy())


@pytest.mark.parametrize("damage, message", [
    (lambda p: truncate(p), "truncated: the header lists"),
    (lambda p: p.write_bytes(p.read_bytes()[:6]), "truncated or not a safetensors file"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 16), "corrupt: 16 bytes after the last tensor"),
    (lambda p: p.write_bytes(p.read_bytes()[:8] + b"#" * 40 + p.read_bytes()[48:]), "corrupt safetensors header"),
    (lambda p: p.write_bytes((10**12).to_bytes(8, "little") + p.read_bytes()[8:]), "the header claims"),
])
def test_damaged_safetensors_are_named(tmp_path, damage, message):
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"a": np.ones((64, 64), np.float32), "b": np.zeros(10, np.float16)}, path)
    damage(path)
    with pytest.raises(ConversionError, match=message) as err:
        read_safetensors(path)
    assert str(path) in str(err.value)


def _resolved(arrays: dict[str, np.ndarray]) -> list[Resolved]:
    from ckpt_convert.sources import TensorRef

    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    refs = {name: TensorRef(name, codes[a.dtype], a.shape, None, lambda a=a: a) for name, a in arrays.items()}
    resolved, _ = resolve([Target(n, a.shape, ((n, a.shape),)) for n, a in arrays.items()], refs,
                          ignore=lambda name: None, dtype=None, what="test")
    return resolved


def test_mindspore_ckpt_written_and_read_back(tmp_path, monkeypatch, runtime):
    import ckpt_convert.targets as targets

    monkeypatch.setattr(targets, "_CKPT_SLICE", 1000)  # force multi-record tensors, as 512 MB slices do in 7B models
    arrays = {"w": np.random.default_rng(0).standard_normal((40, 30)).astype(np.float32),
              "h": np.arange(12, dtype=np.float16).reshape(3, 4), "s": np.array(7, np.int32)}
    path = tmp_path / "x.ckpt"
    write_mindspore_ckpt(path, _resolved(arrays), Summary("test"))
    loaded = ms.load_checkpoint(str(path), crc_check=True)
    assert all(np.array_equal(loaded[n].asnumpy(), a) for n, a in arrays.items())
    refs = read_mindspore_ckpt(path)
    assert all(np.array_equal(refs[n].read(), a) and refs[n].shape == a.shape for n, a in arrays.items())

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.ckpt").write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="flipped.ckpt: corrupt"):
        read_mindspore_ckpt(tmp_path / "flipped.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(path.read_bytes()[:2500])
    with pytest.raises(ConversionError, match="cut.ckpt: truncated"):
        read_mindspore_ckpt(tmp_path / "cut.ckpt")


def test_reads_checkpoints_saved_by_mindspore(tmp_path, runtime):
    weight = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(weight)},
                        {"name": "b", "data": ms.Tensor(weight[0]).astype(ms.bfloat16)}], str(tmp_path / "m.ckpt"))
    refs = read_mindspore_ckpt(tmp_path / "m.ckpt")
    assert np.array_equal(refs["w"].read(), weight)
    assert refs["b"].dtype == "BF16" and np.array_equal(refs["b"].read(), cast(weight[0], "F32", "BF16"))


def test_output_is_atomic(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_outputs(dst, overwrite=False, folders=True) as (tmp,):
            (tmp / "half-written.safetensors").write_bytes(b"x" * 100)
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_outputs(dst, overwrite=False, folders=True) as (tmp,):
        (tmp / "a").write_text("1")
    with pytest.raises(ConversionError, match="already exists; pass --overwrite"):
        with atomic_outputs(dst, overwrite=False, folders=True):
            pass
    with atomic_outputs(dst, overwrite=True, folders=True) as (tmp,):
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in dst.iterdir()] == ["b"]


def test_resolve_lists_every_problem():
    from ckpt_convert.sources import TensorRef

    refs = {name: TensorRef(name, "F32", shape, "f.safetensors", lambda: None)
            for name, shape in (("a", (2, 2)), ("b", (3,)), ("extra", (1,)), ("buffer", (1,)))}
    targets = [Target("a", (2, 2), (("a", (2, 2)),)), Target("b", (4,), (("b", (4,)),)),
               Target("c", (1,), (("c", (1,)),)), Target("a", (2, 2), (("a", (2, 2)),))]
    with pytest.raises(ConversionError) as err:
        resolve(targets, refs, ignore=lambda n: "a buffer" if n == "buffer" else None, dtype=None, what="m")
    message = str(err.value)
    for part in ("produced twice (1): a", "missing in the source (1): c", "mis-shaped (1): b (file [3], expected [4])",
                 "unknown (not part of this model) (1): extra", "f.safetensors"):
        assert part in message
    assert "buffer" not in message.split("[files")[0]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert run(main, ["lpips", "--src", str(tmp_path / "x.pth"), "--dst", str(tmp_path / "y.ckpt")]) == USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.pth: file not found" in err
    assert run(main, ["clip", "--src", str(tmp_path / "absent"), "--dst", str(tmp_path / "out")]) == USER_ERROR_EXIT
    assert "absent: not a folder" in capsys.readouterr().err
    assert run(main, ["llama", "--src", str(tmp_path), "--dst", str(tmp_path / "x.bin")]) == USER_ERROR_EXIT
    assert "--dst must name a .ckpt file" in capsys.readouterr().err
