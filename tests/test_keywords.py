"""The keyword stage: cache and resume, output file, sharding, and MindFormers generation with a tiny Llama.

The tiny random Llama answers with garbage, so its tests check equalities (batched == one by one, KV cache ==
no cache, two msrun workers == one worker), never content; content is covered by the recorded answers of
tests/test_keywords_parse.py and by a deterministic fake LLM here.
"""
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from research.pmg.config import KeywordsConfig
from research.pmg.config.data import DataConfig
from research.pmg.data.prepare import prepare
from research.pmg.keywords.cache import AnswerCache, CacheError
from research.pmg.keywords.extract import (Extractor, extract_keywords, merge_parts, select_samples, shard,
                                           write_part)
from research.pmg.keywords.prompts import load_templates, resolve_templates
from research.pmg.records.keywords import KeywordsFileError, load_keywords, summary_path
from research.pmg.records.samples import load_prepared
from tests.tiny_models import REPO, TINY_CONFIG, tiny_config

SEQ_LENGTH = 512  # the tiny tokenizer needs about 430 tokens for a sticker prompt
MAX_NEW = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kw-data") / "data"
    prepare("stickers", DataConfig(out=str(out)), progress=False)
    return out


class FakeLLM:
    """A deterministic stand-in for KeywordLLM: each answer is a function of its prompt, calls are counted."""

    model_id = "fake:1"
    budget = 10**6

    def __init__(self, fail_after_batches=None):
        self.prompts_generated, self.batches_generated = 0, 0
        self.fail_after_batches = fail_after_batches

    @staticmethod
    def count_tokens(text):
        return len(text)

    def generate(self, prompts):
        if self.fail_after_batches is not None and self.batches_generated >= self.fail_after_batches:
            raise KeyboardInterrupt  # the run is killed in the middle
        self.batches_generated += 1
        self.prompts_generated += len(prompts)
        return [self.answer(p) for p in prompts]

    @staticmethod
    def answer(prompt):
        if "most distinctive" in prompt:  # integrate: pick the last two listed keywords, and invent one
            listed = re.findall(r"^- (.+)$", prompt.split("[/INST]")[0], flags=re.M)
            return f"Here you go:\n1. {listed[-1]}\n2. Unicorn\n3. {listed[-2]}"
        h = hashlib.sha256(prompt.encode()).hexdigest()
        return f"Sure! Keywords:\n1. Word-{h[:3]}\n2. {h[3:6]} style (because)\n3. WORD-{h[:3]}"


def _extract(data_dir, tmp_path, llm, name="run", **settings):
    kcfg = KeywordsConfig(batch_size=3, max_new_tokens=MAX_NEW, **settings)
    cfg = tiny_config(tmp_path, f"models.llm.seq_length={SEQ_LENGTH}")
    out = tmp_path / name / "keywords.jsonl"
    summary, stats = extract_keywords(cfg, kcfg, None, data_dir=data_dir, out=out,
                                      cache_dir=tmp_path / name / "cache", llm=llm)
    return out, summary, stats


# ---------------------------------------------------------------------------------------------------------------------
# Orchestration, cache, output (fake LLM)
# ---------------------------------------------------------------------------------------------------------------------
def test_second_run_makes_no_llm_calls(data_dir, tmp_path):
    first = FakeLLM()
    out, summary, stats = _extract(data_dir, tmp_path, first, max_samples=10)
    assert first.prompts_generated == stats.generated == stats.prompts > 0
    assert stats.prompts < 10 * 3 * 2  # targets shared by samples are asked once
    before = out.read_bytes()
    second = FakeLLM()
    _, _, stats = _extract(data_dir, tmp_path, second, max_samples=10)
    assert second.prompts_generated == 0 and stats.generated == 0 and stats.cached == stats.prompts
    assert out.read_bytes() == before


def test_killed_run_resumes_without_redoing_or_losing_work(data_dir, tmp_path):
    reference, _, full = _extract(data_dir, tmp_path, FakeLLM(), name="reference", max_samples=12)

    killed = FakeLLM(fail_after_batches=4)
    with pytest.raises(KeyboardInterrupt):
        _extract(data_dir, tmp_path, killed, name="resumed", max_samples=12)
    assert not (tmp_path / "resumed" / "keywords.jsonl").exists()  # no half-written output
    part = tmp_path / "resumed" / "cache" / "part-0.jsonl"
    assert len(part.read_text(encoding="utf-8").splitlines()) == 4 * 3  # every finished batch is on disk
    with open(part, "ab") as handle:  # the crash tore the line being written
        handle.write(b'{"key": "abc", "model": "fake:1", "te')

    resumed = FakeLLM()
    out, _, stats = _extract(data_dir, tmp_path, resumed, name="resumed", max_samples=12)
    assert stats.torn_cache_lines == 1
    assert resumed.prompts_generated == full.generated - 4 * 3  # nothing redone, nothing lost
    assert out.read_bytes() == reference.read_bytes()
    lines = part.read_text(encoding="utf-8").splitlines()
    assert len(lines) == full.generated and all(json.loads(line) for line in lines)  # torn tail cut off


def test_cache_is_locked_per_rank_and_shared_between_ranks(tmp_path):
    with AnswerCache(tmp_path / "c", rank=0) as cache:
        cache.put_many([("k1", "m", "t", "1. cat")])
        with pytest.raises(CacheError, match="in use by another keyword run"):
            AnswerCache(tmp_path / "c", rank=0)
        with AnswerCache(tmp_path / "c", rank=1) as other:
            assert other.get("k1") == "1. cat"
            other.put_many([("k2", "m", "t", "2. dog")])
    assert AnswerCache(tmp_path / "c", rank=0).get("k2") == "2. dog"
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheError, match="must be a folder"):
        AnswerCache(tmp_path / "f")


def test_output_records_and_reader(data_dir, tmp_path):
    out, summary, _ = _extract(data_dir, tmp_path, FakeLLM(), max_samples=4, num_preference=2, num_target=3)
    lines = out.read_text(encoding="utf-8").splitlines()
    data = load_prepared(data_dir)
    records = [json.loads(line) for line in lines]
    assert [r["id"] for r in records] == [s.id for s in data.samples[:4]]
    assert all(line == json.dumps(r, sort_keys=True, ensure_ascii=False) for line, r in zip(lines, records))
    first = records[0]
    assert set(first) == {"id", "user_id", "target", "preference_keywords", "target_keywords", "status",
                          "preference_detail", "target_detail"}
    answers = first["preference_detail"]["answers"]
    assert [a["attribute"] for a in answers] == ["character", "emotion", "style"]
    assert answers[0]["raw"].startswith("Sure! Keywords:\n1. Word-")
    first_keyword, second_keyword = answers[0]["keywords"]  # the third, "WORD-...", is the first again
    assert first_keyword.startswith("word-") and second_keyword.endswith(" style")
    assert answers[0]["status"] == "ok" and answers[0]["history_used"] == 5 and answers[0]["turns_used"] == 2
    merged = first["preference_detail"]["merged"]
    assert merged[:3] == [a["keywords"][0] for a in answers]  # round-robin priority
    assert first["preference_keywords"] == merged[:2] and len(first["target_keywords"]) == 3
    assert summary == json.loads(summary_path(out).read_text(encoding="utf-8"))
    assert summary["counts"]["samples"] == 4 and summary["counts"]["answers"]["ok"] == 4 * 6
    assert summary["templates"]["id"] == "sticker@v1" and summary["model_id"] == "fake:1"

    loaded = load_keywords(out)
    assert list(loaded) == [r["id"] for r in records]
    assert loaded[first["id"]].preference_keywords == tuple(first["preference_keywords"])
    assert loaded[first["id"]].target == first["target"] and loaded[first["id"]].status == "ok"
    assert load_keywords(out.parent)[first["id"]] == loaded[first["id"]]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"id": "a", "user_id": "u", "target": "t", "status": "ok", "preference_keywords": "cat", '
     '"target_keywords": []}', "'preference_keywords' must be a list"),
    ('{"id": "a", "user_id": "u", "target": "t", "status": "great", "preference_keywords": [], '
     '"target_keywords": []}', "field 'status'"),
])
def test_reader_names_file_and_line_of_bad_records(tmp_path, line, message):
    good = ('{"id": "a", "user_id": "u", "target": "t", "status": "ok", "preference_keywords": ["cat"], '
            '"target_keywords": ["dog"]}')
    path = tmp_path / "keywords.jsonl"
    path.write_text(good.replace('"a"', '"b"') + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(KeywordsFileError, match=f"{path}:2: .*{re.escape(message)}"):
        load_keywords(path)
    path.write_text(good + "\n" + good + "\n", encoding="utf-8")
    with pytest.raises(KeywordsFileError, match="appears twice"):
        load_keywords(path)
    path.write_text(good + "\n", encoding="utf-8")
    summary_path(path).write_text('{"format_version": 99}', encoding="utf-8")
    with pytest.raises(KeywordsFileError, match="format_version 99"):
        load_keywords(path)


def test_integrate_pass_picks_from_the_merged_list(data_dir, tmp_path):
    fake = FakeLLM()
    out, summary, stats = _extract(data_dir, tmp_path, fake, max_samples=3, integrate=True, num_preference=2,
                                   num_target=4)
    assert stats.by_phase["integrate"] > 0
    for record in map(json.loads, out.read_text(encoding="utf-8").splitlines()):
        for key, cap in (("preference", 2), ("target", 4)):
            detail = record[f"{key}_detail"]
            merged = detail["merged"]
            assert len(merged) > cap and detail["integrate"]["status"] == "ok"
            assert detail["integrate"]["dropped"] == ["unicorn"]
            assert record[f"{key}_keywords"] == [merged[-1], merged[-2], *merged[:cap - 2]][:cap]
    assert summary["counts"]["integrate"]["ok"] == 6


def test_shards_merge_into_the_one_worker_records(data_dir, tmp_path):
    data = load_prepared(data_dir)
    kcfg = KeywordsConfig(batch_size=2, max_samples=7)
    samples = select_samples(data, kcfg)
    templates = load_templates(resolve_templates("", "stickers"))

    def records(rank, world):
        with AnswerCache(tmp_path / f"cache-{world}", rank) as cache:
            return Extractor(FakeLLM(), templates, kcfg, cache).run(shard(samples, rank, world), data.items)

    out = tmp_path / "keywords.jsonl"
    for rank in range(3):
        write_part(out, records(rank, 3), rank, 3)
    assert merge_parts(out, samples, 3) == records(0, 1)
    assert [s.id for s in shard(samples, 1, 3)] == [samples[i].id for i in (1, 4)]
    (out.parent / f".{out.name}.parts" / "rank-2-of-3.jsonl").unlink()
    with pytest.raises(KeywordsFileError, match="worker 2's part is missing"):
        merge_parts(out, samples, 3)


def test_cli_reports_bad_settings_on_one_line(tmp_path, capsys):
    from research.pmg.cli import run
    from research.pmg.keywords.__main__ import main

    args = ["--config", str(TINY_CONFIG), "--set", f"runtime.output_dir={tmp_path}"]
    for bad, message in ((["--set", "keywords.batch_size=0"], "keywords.batch_size: must be > 0"),
                         (["--set", "keywords.splits=[train,dev]"], "'dev' is not one of")):
        assert run(main, args + bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "keywords").exists()


# ---------------------------------------------------------------------------------------------------------------------
# MindFormers generation with the tiny Llama
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm_cfg(runtime):
    return tiny_config(runtime.output_dir, f"models.llm.seq_length={SEQ_LENGTH}")


@pytest.fixture(scope="module")
def engines(llm_cfg, runtime):
    """Three engines on the same random-init weights: KeywordLLM re-seeds before it builds them (engine.py)."""
    from research.pmg.keywords.engine import KeywordLLM

    kcfg = KeywordsConfig(max_new_tokens=MAX_NEW, batch_size=4)
    return {"batched": KeywordLLM(llm_cfg, kcfg, runtime),
            "single": KeywordLLM(llm_cfg, replace(kcfg, batch_size=1), runtime),
            "no_kv_cache": KeywordLLM(llm_cfg, replace(kcfg, use_past=False), runtime)}


def _prompts(engine, data_dir):
    """Random token prompts of very different lengths, and two real rendered prompts."""
    rng = np.random.default_rng(7)
    prompts = [[1, *rng.integers(3, engine.tokenizer.vocab_size, n).tolist()] for n in (6, 40, 150, 90)]
    data = load_prepared(data_dir)
    from research.pmg.keywords.prompts import PromptBuilder

    builder = PromptBuilder(load_templates(resolve_templates("", "stickers")), "llama2", per_attribute=5,
                            max_item_chars=200, count_tokens=engine.count_tokens, budget=engine.budget)
    real = builder.preference(data.samples[0], data.items)[0].text, builder.target(data.items["1f43b"])[1].text
    return prompts + [engine.encode(t) for t in real]


def test_batched_generation_equals_one_by_one(engines, data_dir):
    batched, single = engines["batched"], engines["single"]
    prompts = _prompts(batched, data_dir)
    one_by_one = [single.generate_ids([p])[0] for p in prompts]
    together = batched.generate_ids(prompts[:4]) + batched.generate_ids(prompts[4:])  # a full and a padded batch
    assert together == one_by_one
    assert all(len(ids) == MAX_NEW for ids in together)  # a random model rarely says EOS
    assert len({tuple(ids) for ids in together}) >= 3, "answers should differ between prompts"
    assert batched.prompts_generated == len(prompts) and batched.batches_generated == 2


def test_kv_cache_generation_equals_full_recompute(engines, data_dir):
    prompts = _prompts(engines["batched"], data_dir)[:4]
    assert engines["batched"].generate_ids(prompts) == engines["no_kv_cache"].generate_ids(prompts)


def test_kv_cache_with_grouped_query_attention(runtime):
    from research.pmg.keywords.engine import KeywordLLM

    cfg = tiny_config(runtime.output_dir, "models.llm.seq_length=128", "models.llm.n_kv_heads=2")
    kcfg = KeywordsConfig(max_new_tokens=8, batch_size=2)
    rng = np.random.default_rng(3)
    prompts = [[1, *rng.integers(3, 512, n).tolist()] for n in (9, 70)]
    with_cache = KeywordLLM(cfg, kcfg, runtime).generate_ids(prompts)
    assert with_cache == KeywordLLM(cfg, replace(kcfg, use_past=False), runtime).generate_ids(prompts)


def test_extraction_with_the_tiny_llama_is_cached(engines, data_dir, llm_cfg, tmp_path, runtime):
    llm = engines["batched"]
    kcfg = replace(llm.kcfg, max_samples=5)
    kwargs = dict(data_dir=data_dir, out=tmp_path / "keywords.jsonl", cache_dir=tmp_path / "cache", llm=llm)
    summary, stats = extract_keywords(llm_cfg, kcfg, runtime, **kwargs)
    assert stats.generated == stats.prompts > 0 and summary["counts"]["samples"] == 5
    done, first = llm.prompts_generated, (tmp_path / "keywords.jsonl").read_bytes()
    _, stats = extract_keywords(llm_cfg, kcfg, runtime, **kwargs)
    assert llm.prompts_generated == done and stats.generated == 0
    assert (tmp_path / "keywords.jsonl").read_bytes() == first
    assert summary["model_id"].startswith("random-init:")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_msrun_workers_write_the_one_worker_output(engines, data_dir, llm_cfg, tmp_path, runtime):
    settings = dict(max_samples=6, batch_size=2)
    single = tmp_path / "one" / "keywords.jsonl"
    extract_keywords(llm_cfg, replace(engines["batched"].kcfg, **settings), runtime, data_dir=data_dir,
                     out=single, cache_dir=tmp_path / "one" / "cache", llm=engines["batched"])

    env = dict(os.environ, VENV=sys.prefix, LOG_DIR=str(tmp_path / "msrun"), MASTER_PORT=str(_free_port()),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = tmp_path / "two" / "keywords.jsonl"
    cmd = ["bash", str(REPO / "scripts" / "run_keywords.sh"), "--nproc", "2", "--config", str(TINY_CONFIG),
           "--set", f"runtime.output_dir={tmp_path / 'two'}", "--set", f"models.llm.seq_length={SEQ_LENGTH}",
           "--data", str(data_dir), "--out", str(out), "--set", f"keywords.max_new_tokens={MAX_NEW}",
           "--set", "keywords.max_samples=6", "--set", "keywords.batch_size=3", "--no-progress"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "msrun").glob("*.log")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs
    assert "worker 0 of 2" in result.stdout
    assert out.read_bytes() == single.read_bytes()
    assert json.loads(summary_path(out).read_text()) == json.loads(summary_path(single).read_text())
    assert sorted(p.name for p in (tmp_path / "two" / "keywords" / "cache").iterdir()) == [
        ".pmg-owned", "part-0.jsonl", "part-1.jsonl"]
    assert not (out.parent / f".{out.name}.parts").exists()
