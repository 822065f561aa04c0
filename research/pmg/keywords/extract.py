"""Stage 2 of PMG: per-sample preference keywords k_p and target keywords k_t, batched, cached, sharded.

For each selected sample: one prompt per attribute from its history (and conversation), one per attribute
from its target item; the answers are parsed, merged in priority order and capped; optionally an integrate
pass asks the LLM to pick the N most distinctive keywords of the merged list. Every prompt goes through the
answer cache, so a re-run generates nothing that is already answered, and an interrupted run resumes.
Identical prompts (the same target item in many samples) are generated once.

Data parallel: with ``world`` workers, worker ``rank`` takes samples ``rank, rank + world, ...`` (dataset
order), writes its records to ``.<out name>.parts/rank-<r>-of-<w>.jsonl``, and after a barrier rank 0 merges
the parts in dataset order. Answers do not depend on the batch a prompt ran in (greedy decoding), so the
merged file is byte-identical to a one-worker run.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from research.pmg import testhooks
from research.pmg.config.keywords import KeywordsConfig
from research.pmg.files import to_jsonl, write_atomic
from research.pmg.keywords.cache import AnswerCache, cache_key
from research.pmg.keywords.merge import merge_ranked, pick_integrated
from research.pmg.keywords.parse import STATUSES, parse_keywords
from research.pmg.keywords.prompts import Prompt, PromptBuilder, TemplateSet
from research.pmg.records.keywords import FORMAT_VERSION, KeywordsFileError, summary_path
from research.pmg.records.samples import Item, PreparedData, Sample

INTEGRATE_STATUSES = (*STATUSES, "off_list")


@dataclass
class RunStats:
    """What one worker did: not part of the output (it differs between a first run and a resumed one)."""

    samples: int = 0
    prompts: int = 0  # distinct prompts this worker needed
    cached: int = 0  # of those, answered from the cache
    generated: int = 0  # of those, sent to the LLM
    torn_cache_lines: int = 0
    by_phase: dict[str, int] = field(default_factory=dict)


def select_samples(data: PreparedData, kcfg: KeywordsConfig) -> list[Sample]:
    """The samples of ``keywords.splits`` in dataset order, the first ``keywords.max_samples`` of them."""
    chosen = [s for s in data.samples if s.split in kcfg.splits]
    return chosen[:kcfg.max_samples] if kcfg.max_samples else chosen


def shard(samples: Sequence[Sample], rank: int, world: int) -> list[Sample]:
    """Worker ``rank``'s deterministic share: every ``world``-th sample starting at ``rank``."""
    return list(samples[rank::world])


class Extractor:
    """Runs prompts through the cache and the LLM, and turns answers into per-sample records."""

    def __init__(self, llm, templates: TemplateSet, kcfg: KeywordsConfig, cache: AnswerCache, *,
                 progress: bool = False):
        self.llm, self.templates, self.kcfg, self.cache = llm, templates, kcfg, cache
        self.builder = PromptBuilder(templates, kcfg.chat_format, per_attribute=kcfg.per_attribute,
                                     max_item_chars=kcfg.max_item_chars, count_tokens=llm.count_tokens,
                                     budget=llm.budget)
        self.progress = progress
        self.stats = RunStats(torn_cache_lines=cache.torn_lines)

    def answers(self, prompts: Sequence[str], phase: str) -> dict[str, str]:
        """``{prompt: raw answer}``: cached answers, and new ones generated in batches and cached per batch."""
        keys = {p: cache_key(self.llm.model_id, self.templates.id, p) for p in prompts}
        todo = [p for p, key in keys.items() if key not in self.cache]
        self.stats.prompts += len(keys)
        self.stats.cached += len(keys) - len(todo)
        size = self.kcfg.batch_size
        with tqdm(total=len(todo), desc=f"keywords ({phase})", unit=" prompt", leave=False,
                  disable=None if self.progress else True) as bar:
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                texts = self.llm.generate(chunk)
                self.cache.put_many((keys[p], self.llm.model_id, self.templates.id, t) for p, t in zip(chunk, texts))
                testhooks.hold("keywords", "batch-cached")
                self.stats.generated += len(chunk)
                self.stats.by_phase[phase] = self.stats.by_phase.get(phase, 0) + len(chunk)
                bar.update(len(chunk))
        return {p: self.cache.get(keys[p]) for p in keys}

    def run(self, samples: Sequence[Sample], items: dict[str, Item]) -> list[dict[str, Any]]:
        """One record per sample (schema in :mod:`research.pmg.records.keywords`), in ``samples`` order."""
        self.stats.samples += len(samples)
        preference = {s.id: self.builder.preference(s, items) for s in samples}
        targets = {s.target: self.builder.target(items[s.target]) for s in samples}
        prompts = [p.text for group in (*preference.values(), *targets.values()) for p in group]
        answered = self.answers(prompts, "attributes")

        details = {}
        for sample in samples:
            details[sample.id] = (_detail(preference[sample.id], answered, self.kcfg, history=True),
                                  _detail(targets[sample.target], answered, self.kcfg, history=False))
        caps = (self.kcfg.num_preference, self.kcfg.num_target)
        if self.kcfg.integrate:
            pending = [(detail, cap, self.builder.integrate(detail["merged"], cap))
                       for pair in details.values() for detail, cap in zip(pair, caps) if len(detail["merged"]) > cap]
            answered = self.answers([prompt.text for _, _, prompt in pending], "integrate")
            for detail, cap, prompt in pending:
                _integrate(detail, answered[prompt.text], self.kcfg, cap)

        records = []
        for sample in samples:
            pref, target = details[sample.id]
            record = {"id": sample.id, "user_id": sample.user_id, "target": sample.target,
                      "preference_keywords": _final(pref, caps[0]), "target_keywords": _final(target, caps[1]),
                      "preference_detail": pref, "target_detail": target}
            record["status"] = _sample_status(record)
            records.append(record)
        return records


def _detail(prompts: Sequence[Prompt], answered: dict[str, str], kcfg: KeywordsConfig, *, history: bool) -> dict:
    """Parsed per-attribute answers and their merged union (uncapped), for one side of one sample."""
    answers = []
    for prompt in prompts:
        raw = answered[prompt.text]
        parsed = parse_keywords(raw, max_words=kcfg.max_keyword_words)
        answer = {"attribute": prompt.attribute, "raw": raw, "keywords": list(parsed.keywords),
                  "rejected": list(parsed.rejected), "status": parsed.status}
        if history:
            answer.update(history_used=prompt.history_used, turns_used=prompt.turns_used)
        answers.append(answer)
    return {"answers": answers, "merged": merge_ranked([a["keywords"] for a in answers]), "integrate": None}


def _integrate(detail: dict, raw: str, kcfg: KeywordsConfig, cap: int) -> None:
    """Apply the integrate answer: its picks from the merged list, filled up in priority order to ``cap``."""
    parsed = parse_keywords(raw, max_words=kcfg.max_keyword_words)
    picked, dropped = pick_integrated(parsed.keywords, detail["merged"], cap)
    status = parsed.status
    if status == "ok" and len(dropped) == len(parsed.keywords):
        status = "off_list"  # it answered, but with none of the keywords it was given
    detail["integrate"] = {"raw": raw, "keywords": picked, "status": status, "dropped": dropped}


def _final(detail: dict, cap: int) -> list[str]:
    if detail["integrate"] is not None:
        return list(detail["integrate"]["keywords"])
    return detail["merged"][:cap]


def _sample_status(record: dict) -> str:
    if not record["preference_keywords"] or not record["target_keywords"]:
        return "failed"
    details = (record["preference_detail"], record["target_detail"])
    answers_ok = all(a["status"] in ("ok", "none") for d in details for a in d["answers"])
    integrate_ok = all(d["integrate"] is None or d["integrate"]["status"] == "ok" for d in details)
    return "ok" if answers_ok and integrate_ok else "partial"


def extract_keywords(cfg, kcfg: KeywordsConfig, runtime, *, data_dir: Path, out: Path, cache_dir: Path,
                     rank: int = 0, world: int = 1, llm=None, progress: bool = False
                     ) -> tuple[dict[str, Any] | None, RunStats]:
    """Run the stage for worker ``rank`` of ``world``; return the summary (on the writing worker) and its stats.

    ``cfg`` is the :class:`~research.pmg.config.PMGConfig` (scenario and ``models.llm``); ``llm`` may be a
    ready :class:`~research.pmg.keywords.engine.KeywordLLM` for these settings (tests and benchmarks reuse
    one). With ``world > 1`` every worker must call this; rank 0 writes ``out`` once all parts are there.
    """
    from research.pmg.records.samples import load_prepared
    from research.pmg.keywords.prompts import load_templates, resolve_templates

    templates = load_templates(resolve_templates(kcfg.templates, cfg.scenario))
    data = load_prepared(data_dir)
    samples = select_samples(data, kcfg)
    if not samples:
        raise KeywordsFileError(f"{data_dir}: no sample in splits {list(kcfg.splits)}")
    if llm is None:
        from research.pmg.keywords.engine import KeywordLLM

        llm = KeywordLLM(cfg, kcfg, runtime)
    with AnswerCache(cache_dir, rank) as cache:
        extractor = Extractor(llm, templates, kcfg, cache, progress=progress and rank == 0)
        records = extractor.run(shard(samples, rank, world), data.items)
    if world > 1:
        write_part(out, records, rank, world)
        barrier()
        if rank != 0:
            return None, extractor.stats
        records = merge_parts(out, samples, world)
    summary = build_summary(records, scenario=cfg.scenario, data_dir=data_dir, llm_model_id=llm.model_id,
                            templates=templates, kcfg=kcfg)
    write_output(out, records, summary)
    remove_parts(out)
    return summary, extractor.stats


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------
def build_summary(records: Sequence[dict], *, scenario: str, data_dir: Path, llm_model_id: str,
                  templates: TemplateSet, kcfg: KeywordsConfig) -> dict[str, Any]:
    """Format version, provenance, the settings that shape the output, and counts (same for any worker count)."""
    answers = Counter(a["status"] for r in records for key in ("preference_detail", "target_detail")
                      for a in r[key]["answers"])
    integrate = Counter(r[key]["integrate"]["status"] for r in records for key in ("preference_detail", "target_detail")
                        if r[key]["integrate"] is not None)
    return {
        "format_version": FORMAT_VERSION,
        "scenario": scenario,
        "dataset": str(data_dir.resolve()),
        "model_id": llm_model_id,
        "templates": {"id": templates.id, "file": templates.source},
        "settings": {"chat_format": kcfg.chat_format, "num_preference": kcfg.num_preference,
                     "num_target": kcfg.num_target, "per_attribute": kcfg.per_attribute,
                     "integrate": kcfg.integrate, "max_new_tokens": kcfg.max_new_tokens,
                     "max_item_chars": kcfg.max_item_chars, "max_keyword_words": kcfg.max_keyword_words,
                     "splits": list(kcfg.splits), "max_samples": kcfg.max_samples},
        "counts": {"samples": len(records), **{s: sum(r["status"] == s for r in records)
                                               for s in ("ok", "partial", "failed")},
                   "answers": {s: answers.get(s, 0) for s in STATUSES},
                   "integrate": {s: integrate.get(s, 0) for s in INTEGRATE_STATUSES}},
    }


def write_output(out: Path, records: Sequence[dict], summary: dict[str, Any]) -> None:
    """The keywords file, then its summary; each written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, to_jsonl(list(records)))
    write_atomic(summary_path(out), json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def parts_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.parts")


def write_part(out: Path, records: Sequence[dict], rank: int, world: int) -> Path:
    folder = parts_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{rank}-of-{world}.jsonl"
    write_atomic(path, to_jsonl(list(records)))
    return path


def merge_parts(out: Path, order: Sequence[Sample], world: int) -> list[dict]:
    """All workers' records, in dataset order; every part must be there and cover its shard exactly."""
    folder = parts_dir(out)
    by_id: dict[str, dict] = {}
    for rank in range(world):
        path = folder / f"rank-{rank}-of-{world}.jsonl"
        if not path.is_file():
            raise KeywordsFileError(f"{path}: worker {rank}'s part is missing; did it fail? (see the msrun logs)")
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        expected = [s.id for s in shard(order, rank, world)]
        if [r["id"] for r in records] != expected:
            raise KeywordsFileError(f"{path}: holds other samples than worker {rank} of {world} should have written")
        by_id.update((r["id"], r) for r in records)
    return [by_id[s.id] for s in order]


def remove_parts(out: Path) -> None:
    shutil.rmtree(parts_dir(out), ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Distributed workers (msrun)
# ---------------------------------------------------------------------------------------------------------------------
def barrier() -> None:
    """Wait for every worker: an all-reduce of one number (``comm_func.barrier`` has no CPU kernel)."""
    import mindspore as ms
    from mindspore import nn, ops

    class _Sync(nn.Cell):
        def __init__(self):
            super().__init__()
            self.all_reduce = ops.AllReduce()

        def construct(self, x):
            return self.all_reduce(x)

    _Sync()(ms.Tensor([1.0], ms.float32)).asnumpy()
