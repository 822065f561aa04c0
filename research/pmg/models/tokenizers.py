"""Real tokenizers for tiny random-init models, trained offline from a bundled corpus.

Tests and the CPU demo run without network access, yet the keyword and generation code must see the
same tokenizer classes as with the real checkpoints. So we train, in a fraction of a second:

- a sentencepiece BPE model set up like Llama 2's (byte fallback, split digits, identity normalisation,
  ``<unk>``=0, ``<s>``=1, ``</s>``=2, no pad piece), loaded as ``transformers.LlamaTokenizer``;
- a byte-level BPE vocabulary in CLIP's file format (``vocab.json`` + ``merges.txt``), loaded as
  ``transformers.CLIPTokenizer``, with merges learned by the small trainer below.

Builds are deterministic (same corpus and sizes give byte-identical files) and cached by content hash.
This module must stay importable without MindSpore.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import regex
import sentencepiece as spm

from research.pmg.errors import PMGError, short_repr

TINY_CORPUS = Path(__file__).resolve().parents[1] / "assets" / "tiny_corpus.txt"

LLAMA_MODEL_FILE = "tokenizer.model"
CLIP_VOCAB_FILE = "vocab.json"
CLIP_MERGES_FILE = "merges.txt"
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"

_LLAMA_META_PIECES = 3  # <unk>, <s>, </s>
_NUM_BYTES = 256
# Llama 2's trainer_spec/normalizer_spec as stored in its tokenizer.model, minus the corpus-size knobs.
# num_threads=1 keeps the build deterministic; the corpus is tiny, so it costs nothing.
_LLAMA_TRAINER_SPEC = dict(
    model_type="bpe", character_coverage=0.99995, byte_fallback=True, split_digits=True,
    split_by_unicode_script=True, split_by_number=True, split_by_whitespace=True,
    treat_whitespace_as_suffix=False, allow_whitespace_only_pieces=True, max_sentencepiece_length=16,
    max_sentence_length=4192, num_sub_iterations=2, shrinking_factor=0.75,
    vocabulary_output_piece_score=True, hard_vocab_limit=True, use_all_vocab=False,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_surface=" \u2047 ",
    normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
    num_threads=1, minloglevel=2,
)
# What HF's Llama-2 tokenizer_config.json sets: BOS added, no EOS, no pad, no space clean-up on decode,
# and the non-legacy handling of text that follows a special token.
_LLAMA2_HF_KWARGS = dict(add_bos_token=True, add_eos_token=False, legacy=False, clean_up_tokenization_spaces=False)

# The pre-tokeniser of transformers.CLIPTokenizer (after its whitespace clean-up and lower-casing), so the
# merges are learned on the same pieces the tokenizer will later split text into.
_CLIP_PRETOKENIZE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_CLIP_END_OF_WORD = "</w>"
_CLIP_BUILD_VERSION = 1  # bump when the CLIP file layout or trainer changes, to invalidate cached builds


class TokenizerError(PMGError, ValueError):
    """A tokenizer file that is missing its parts or damaged; the message names the file."""


def read_tiny_corpus(path: str | Path = TINY_CORPUS) -> list[str]:
    """The bundled corpus as a list of non-empty lines (no trailing newlines)."""
    text = Path(path).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_llama_tokenizer(lines: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a Llama-2-style sentencepiece BPE model on ``lines``; return ``out_dir/tokenizer.model``.

    ``get_piece_size() == vocab_size`` exactly. Raises ValueError if ``vocab_size`` cannot hold the 3
    special pieces, the 256 byte-fallback pieces and the corpus characters, or exceeds what the corpus
    can produce.
    """
    lines = [line for line in lines if line.strip()]
    floor = _LLAMA_META_PIECES + _NUM_BYTES
    if vocab_size <= floor:
        raise ValueError(f"llama vocab_size={vocab_size} is too small: byte fallback alone needs {floor} pieces "
                         f"(<unk>, <s>, </s> and 256 bytes) plus the corpus characters")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                       vocab_size=vocab_size, **_LLAMA_TRAINER_SPEC)
    except RuntimeError as err:
        if "ocabulary size" in str(err):  # sentencepiece's own "too small"/"too high" checks
            raise ValueError(f"llama vocab_size={vocab_size} does not fit this corpus: {err}") from err
        raise
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LLAMA_MODEL_FILE
    path.write_bytes(model.getvalue())
    return path


def load_llama_tokenizer(path: str | Path):
    """A ``transformers.LlamaTokenizer`` (slow, sentencepiece) with Llama 2 behaviour, from local files.

    ``path`` is a ``tokenizer.model`` file or a folder holding one (a real Llama 2 tokenizer folder works
    too). ``tok(text).input_ids`` is ``list[int]`` starting with bos=1; no pad token is set.
    """
    from transformers import LlamaTokenizer

    path = Path(path)
    model_file = path / LLAMA_MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(f"Llama tokenizer: {model_file} not found")
    if model_file.name != LLAMA_MODEL_FILE:  # from_pretrained only looks for this name
        raise TokenizerError(f"Llama tokenizer: the file must be named {LLAMA_MODEL_FILE}, got {model_file}")
    try:  # transformers' errors for a bad proto are obscure; check it with sentencepiece first
        spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as err:
        raise TokenizerError(f"Llama tokenizer: {model_file} is not a valid sentencepiece model: {err}") from err
    return LlamaTokenizer.from_pretrained(str(model_file.parent), local_files_only=True, **_LLAMA2_HF_KWARGS)


def _clip_words(lines: Iterable[str]) -> dict[tuple[str, ...], int]:
    """Count CLIP pre-tokens as tuples of byte-level symbols, the last one carrying ``</w>``."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    byte_encoder = bytes_to_unicode()
    counts: Counter[str] = Counter()
    for line in lines:
        # CLIPTokenizer: ftfy.fix_text (NFC among others), whitespace_clean, lower()
        text = " ".join(unicodedata.normalize("NFC", line).split()).lower()
        for token in _CLIP_PRETOKENIZE.findall(text):
            if token not in (CLIP_BOS, CLIP_EOS):
                counts["".join(byte_encoder[b] for b in token.encode("utf-8"))] += 1
    return {tuple(word[:-1]) + (word[-1] + _CLIP_END_OF_WORD,): n for word, n in counts.items()}


def _merge_word(word: list[str], first: str, second: str) -> list[str]:
    """Left-to-right, non-overlapping merge of one pair, as ``CLIPTokenizer.bpe`` applies it."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_bpe(words: dict[tuple[str, ...], int], base_vocab: list[str], vocab_size: int) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent adjacent pair until the vocabulary has ``vocab_size`` symbols.

    Ties go to the lexicographically smallest pair, so the result depends only on the word counts.
    A merge whose product is already a symbol is kept (the tokenizer needs it) but adds no entry.
    """
    ordered = sorted(words)
    symbols = [list(word) for word in ordered]
    freqs = [words[word] for word in ordered]
    pair_counts: Counter[tuple[str, str]] = Counter()
    holders: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # may list words that lost the pair

    def count(i: int, sign: int) -> None:
        for pair in zip(symbols[i], symbols[i][1:]):
            pair_counts[pair] += sign * freqs[i]
            if sign > 0:
                holders[pair].add(i)
            elif pair_counts[pair] == 0:
                del pair_counts[pair]

    for i in range(len(symbols)):
        count(i, +1)
    vocab = set(base_vocab)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        if not pair_counts:
            raise ValueError(f"clip vocab_size too large: the corpus runs out of pairs at {len(vocab)} symbols")
        top = max(pair_counts.values())
        best = min(pair for pair, n in pair_counts.items() if n == top)
        merges.append(best)
        vocab.add(best[0] + best[1])
        for i in sorted(holders.pop(best)):
            if best in zip(symbols[i], symbols[i][1:]):
                count(i, -1)
                symbols[i] = _merge_word(symbols[i], *best)
                count(i, +1)
    return merges


def build_clip_tokenizer(lines: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Learn a CLIP byte-level BPE on ``lines``; write ``vocab.json``, ``merges.txt`` and configs to ``out_dir``.

    Layout as OpenAI's: 256 byte symbols, the same with ``</w>``, one entry per merge, then
    ``<|startoftext|>`` and ``<|endoftext|>`` as ids ``vocab_size - 2`` and ``vocab_size - 1``.
    Returns ``out_dir``. Raises ValueError if ``vocab_size`` is below 514 or beyond what the corpus gives.
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    base = list(bytes_to_unicode().values())
    base += [symbol + _CLIP_END_OF_WORD for symbol in base]
    if vocab_size < len(base) + 2:
        raise ValueError(f"clip vocab_size={vocab_size} is too small: the byte alphabet with and without "
                         f"</w> plus 2 special tokens needs {len(base) + 2}")
    merges = learn_bpe(_clip_words(lines), base, vocab_size - 2)
    tokens = list(base)
    seen = set(tokens)
    for first, second in merges:
        if first + second not in seen:
            seen.add(first + second)
            tokens.append(first + second)
    tokens += [CLIP_BOS, CLIP_EOS]
    assert len(tokens) == vocab_size

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = {token: i for i, token in enumerate(tokens)}
    _write_text(out / CLIP_VOCAB_FILE, json.dumps(encoder, ensure_ascii=False) + "\n")
    _write_text(out / CLIP_MERGES_FILE, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "errors": "replace",
              "bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS, "pad_token": CLIP_EOS}
    _write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    specials = {key: config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    _write_text(out / "special_tokens_map.json", json.dumps(specials, indent=2) + "\n")
    return out


def load_clip_tokenizer(path: str | Path, model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` from a local folder with ``vocab.json`` and ``merges.txt``.

    ``tok(texts, padding="max_length", truncation=True).input_ids`` gives ``(batch, model_max_length)``
    lists starting with ``<|startoftext|>`` and padded with ``<|endoftext|>``.
    """
    from transformers import CLIPTokenizer

    folder = Path(path)
    for name in (CLIP_VOCAB_FILE, CLIP_MERGES_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"CLIP tokenizer: {folder / name} not found")
    # transformers reads both files without checking them: bad bytes, a list for a vocabulary or a one-symbol
    # merge surface as UnicodeDecodeError/AttributeError from inside it, or load "fine" and fail later.
    _check_clip_vocab(folder / CLIP_VOCAB_FILE)
    _check_clip_merges(folder / CLIP_MERGES_FILE)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                  model_max_length=model_max_length)
    except Exception as err:  # anything left is still a damaged folder, not a bug of ours: say which
        raise TokenizerError(f"CLIP tokenizer: {folder} could not be loaded ({type(err).__name__}: {err})") from err
    return tokenizer


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise TokenizerError(f"CLIP tokenizer: {path} is not UTF-8 text (byte {err.start})") from None


def _check_clip_vocab(path: Path) -> None:
    """``vocab.json``: one JSON object of token -> distinct non-negative id, with CLIP's BOS and EOS."""
    try:
        vocab = json.loads(_read_utf8(path))
    except json.JSONDecodeError as err:
        raise TokenizerError(f"CLIP tokenizer: {path} is not valid JSON: {err}") from None
    if not isinstance(vocab, dict):
        raise TokenizerError(f"CLIP tokenizer: {path} must hold a JSON object of token -> id, "
                             f"got a {type(vocab).__name__}")
    bad = next((k for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0), None)
    if bad is not None:
        raise TokenizerError(f"CLIP tokenizer: {path}: the id of {short_repr(bad)} is not a non-negative integer")
    if len(set(vocab.values())) != len(vocab):
        raise TokenizerError(f"CLIP tokenizer: {path}: two tokens share an id")
    missing = [token for token in (CLIP_BOS, CLIP_EOS) if token not in vocab]
    if missing:  # CLIPTokenizer would silently append them as new ids past the embedding table
        raise TokenizerError(f"CLIP tokenizer: {path} lacks {missing}")


def _check_clip_merges(path: Path) -> None:
    """``merges.txt``: an optional ``#version`` line, then one merge per line, two symbols apart by a space."""
    for number, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if (number == 1 and line.startswith("#version")) or not line:
            continue
        if len(line.split()) != 2:
            raise TokenizerError(f"CLIP tokenizer: {path}:{number}: a merge is two symbols, got {short_repr(line)}")


def build_tiny_tokenizers(cache_dir: str | Path, llama_vocab_size: int, clip_vocab_size: int) -> tuple[Path, Path]:
    """Both tokenizers from the bundled corpus, cached in ``cache_dir/tokenizers/<hash>/``.

    Returns ``(llama_model_path, clip_dir)``. The hash covers the corpus, both sizes, the sentencepiece
    version and the CLIP build version, so a finished folder is reused as is. The build goes to a temporary
    sibling that is renamed into place at the end: a crashed or concurrent build never exposes a partial
    folder, and when two builds race the first rename wins and the other is discarded.
    """
    corpus = TINY_CORPUS.read_bytes()
    key = hashlib.sha256(corpus)
    key.update(f"|llama={llama_vocab_size}|clip={clip_vocab_size}|spm={spm.__version__}"
               f"|clip_build={_CLIP_BUILD_VERSION}".encode())
    root = Path(cache_dir) / "tokenizers"
    final = root / key.hexdigest()[:16]
    llama_path, clip_dir = final / "llama" / LLAMA_MODEL_FILE, final / "clip"
    if final.is_dir():
        return llama_path, clip_dir

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        lines = read_tiny_corpus()
        build_llama_tokenizer(lines, llama_vocab_size, tmp / "llama")
        build_clip_tokenizer(lines, clip_vocab_size, tmp / "clip")
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return llama_path, clip_dir


def _write_text(path: Path, text: str) -> None:
    """UTF-8 with ``\\n`` line ends on every platform, so builds are byte-identical."""
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
