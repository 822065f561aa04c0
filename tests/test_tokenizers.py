"""Offline tokenizers for tiny models: sizes, special ids, round trips, determinism, caching, errors."""
import hashlib
import json
import shutil

import pytest

from research.pmg.models import tokenizers as T

LLAMA_VOCAB = 512
CLIP_VOCAB = 1000
UNSEEN = "Ünïcödé naïve café — 日本語のテキスト 🐱❤️ ½ ×3"


def file_hashes(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    llama_path, clip_dir = T.build_tiny_tokenizers(cache, LLAMA_VOCAB, CLIP_VOCAB)
    return cache, llama_path, clip_dir


@pytest.fixture(scope="module")
def lines():
    return T.read_tiny_corpus()


@pytest.fixture(scope="module")
def llama(built):
    return T.load_llama_tokenizer(built[1])


@pytest.fixture(scope="module")
def clip(built):
    return T.load_clip_tokenizer(built[2])


def test_corpus_is_modest_and_covers_chat_markers(lines):
    assert 300 <= len(lines) <= 600
    assert T.TINY_CORPUS.stat().st_size < 100_000
    text = "\n".join(lines)
    for marker in ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "1. cute 2. cartoon"):
        assert marker in text


def test_llama_vocab_and_special_ids(built, llama):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(built[1]))
    assert sp.get_piece_size() == LLAMA_VOCAB
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.id_to_piece(3) == "<0x00>" and sp.id_to_piece(258) == "<0xFF>"
    assert len(llama) == LLAMA_VOCAB
    assert (llama.unk_token_id, llama.bos_token_id, llama.eos_token_id, llama.pad_token) == (0, 1, 2, None)
    ids = llama("[INST] What does the user like? [/INST]").input_ids
    assert ids[0] == 1 and ids[-1] != 2  # Llama 2 adds BOS only
    assert llama.tokenize("2024") == ["▁", "2", "0", "2", "4"]  # split_digits


def test_llama_round_trip(built, llama, lines):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(built[1]))
    for line in lines:
        assert sp.decode(sp.encode(line)) == line
        if "<s>" not in line and "</s>" not in line:  # literal special tokens are parsed as such by HF
            assert llama.decode(llama(line).input_ids, skip_special_tokens=True) == line
    for text in (UNSEEN, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi\t there [/INST]"):
        ids = llama(text).input_ids
        assert 0 not in ids
        assert llama.decode(ids, skip_special_tokens=True) == text
    assert any(3 <= i < 259 for i in llama(UNSEEN).input_ids)  # byte fallback in use


def test_clip_vocab_and_special_ids(clip):
    assert len(clip) == clip.vocab_size == CLIP_VOCAB
    assert (clip.bos_token_id, clip.eos_token_id) == (CLIP_VOCAB - 2, CLIP_VOCAB - 1)
    assert clip.pad_token_id == clip.eos_token_id
    ids = clip("a photo of a red wool scarf").input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id
    assert clip.tokenize("a Photo of a cute CAT") == ["a</w>", "photo</w>", "of</w>", "a</w>", "cute</w>", "cat</w>"]
    padded = clip(["a cute cat", "a dog"], padding="max_length", truncation=True).input_ids
    assert [len(row) for row in padded] == [77, 77]
    assert padded[1][-1] == clip.eos_token_id
    long = clip(" ".join(["sticker"] * 200), padding="max_length", truncation=True).input_ids
    assert len(long) == 77 and long[-1] == clip.eos_token_id


def test_clip_round_trip(clip, lines):
    def squash(text):  # CLIP lower-cases and decodes with a space after every word piece
        return "".join(text.lower().split())

    for text in lines + [UNSEEN]:
        ids = clip(text).input_ids
        assert clip.unk_token_id not in ids[1:-1]
        assert squash(clip.decode(ids, skip_special_tokens=True)) == squash(text)


def test_clip_files_format(built):
    clip_dir = built[2]
    vocab = json.loads((clip_dir / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(CLIP_VOCAB))
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    merges = (clip_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert all(len(m.split()) == 2 for m in merges[1:])
    assert len(merges) - 1 >= CLIP_VOCAB - 512 - 2


def test_builds_are_deterministic(built, lines, tmp_path):
    _, llama_path, clip_dir = built
    again_llama = T.build_llama_tokenizer(lines, LLAMA_VOCAB, tmp_path / "llama")
    again_clip = T.build_clip_tokenizer(lines, CLIP_VOCAB, tmp_path / "clip")
    assert again_llama.read_bytes() == llama_path.read_bytes()
    assert file_hashes(again_clip) == file_hashes(clip_dir)


def test_cached_build_is_reused(built, monkeypatch):
    cache, llama_path, clip_dir = built

    def no_rebuild(*args):
        raise AssertionError("rebuilt a cached tokenizer")

    monkeypatch.setattr(T, "build_llama_tokenizer", no_rebuild)
    monkeypatch.setattr(T, "build_clip_tokenizer", no_rebuild)
    mtime = llama_path.stat().st_mtime_ns
    assert T.build_tiny_tokenizers(cache, LLAMA_VOCAB, CLIP_VOCAB) == (llama_path, clip_dir)
    assert llama_path.stat().st_mtime_ns == mtime
    assert [p.name for p in (cache / "tokenizers").iterdir()] == [llama_path.parents[1].name]


def test_crashed_build_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(T, "build_clip_tokenizer", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.build_tiny_tokenizers(tmp_path, LLAMA_VOCAB, CLIP_VOCAB)
    assert list((tmp_path / "tokenizers").iterdir()) == []


def test_lost_race_uses_the_winner(built, tmp_path, monkeypatch):
    winner = built[1].parents[1]
    final = tmp_path / "tokenizers" / winner.name
    real_build = T.build_clip_tokenizer

    def build_then_lose(*args):
        out = real_build(*args)
        shutil.copytree(winner, final)  # another process finishes first
        return out

    monkeypatch.setattr(T, "build_clip_tokenizer", build_then_lose)
    llama_path, clip_dir = T.build_tiny_tokenizers(tmp_path, LLAMA_VOCAB, CLIP_VOCAB)
    assert llama_path.parents[1] == final and clip_dir.parent == final
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == [winner.name]


def test_other_sizes_get_their_own_folder(built):
    cache, llama_path, _ = built
    other_llama, other_clip = T.build_tiny_tokenizers(cache, LLAMA_VOCAB, 600)
    assert other_llama.parents[1] != llama_path.parents[1]
    assert len(T.load_clip_tokenizer(other_clip)) == 600


def test_too_small_vocab_is_a_clear_error(lines, tmp_path):
    with pytest.raises(ValueError, match="byte fallback"):
        T.build_llama_tokenizer(lines, 259, tmp_path)
    with pytest.raises(ValueError, match="does not fit this corpus"):
        T.build_llama_tokenizer(lines, 300, tmp_path)
    with pytest.raises(ValueError, match="too small"):
        T.build_clip_tokenizer(lines, 513, tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_or_corrupt_files_are_clear_errors(built, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        T.load_llama_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        T.load_llama_tokenizer(tmp_path / "tokenizer.model")

    clip_dir = tmp_path / "clip"
    shutil.copytree(built[2], clip_dir)
    (clip_dir / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        T.load_clip_tokenizer(clip_dir)
    shutil.copy(built[2] / "merges.txt", clip_dir)
    (clip_dir / "vocab.json").write_text('{"a": 0,', encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        T.load_clip_tokenizer(clip_dir)


@pytest.mark.parametrize("name, data, expected", [
    ("vocab.json", b'{"a\xe9": 0}', "vocab.json is not UTF-8 text"),
    ("vocab.json", b"[1, 2]", "vocab.json must hold a JSON object of token -> id, got a list"),
    ("vocab.json", b'{"a": "x", "<|startoftext|>": 1, "<|endoftext|>": 2}', "the id of 'a' is not a non-negative"),
    ("vocab.json", b'{"a": 1, "<|startoftext|>": 1, "<|endoftext|>": 2}', "two tokens share an id"),
    ("vocab.json", b'{"a": 0}', r"lacks \['<\|startoftext\|>', '<\|endoftext\|>'\]"),
    ("merges.txt", b"\x00\xff\xfe garbage\n", "merges.txt is not UTF-8 text"),
    ("merges.txt", b"#version: 0.2\nabc\n", "merges.txt:2: a merge is two symbols, got 'abc'"),
])
def test_damaged_clip_files_are_one_named_error(built, tmp_path, name, data, expected):
    """Each damage transformers would let through as a traceback (or load silently) is a TokenizerError, a PMGError
    the command line turns into one ``error:`` line."""
    from research.pmg.errors import PMGError

    clip_dir = tmp_path / "clip"
    shutil.copytree(built[2], clip_dir)
    (clip_dir / name).write_bytes(data)
    with pytest.raises(T.TokenizerError, match=expected) as caught:
        T.load_clip_tokenizer(clip_dir)
    assert isinstance(caught.value, PMGError) and str(clip_dir / name) in str(caught.value)


def test_an_empty_merges_file_is_a_valid_character_level_tokenizer(built, tmp_path):
    clip_dir = tmp_path / "clip"
    shutil.copytree(built[2], clip_dir)
    (clip_dir / "merges.txt").write_bytes(b"#version: 0.2\n")
    assert T.load_clip_tokenizer(clip_dir)("ab").input_ids[0] == T.load_clip_tokenizer(built[2]).encoder[T.CLIP_BOS]

