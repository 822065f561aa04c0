"""PMG as a library, the way the official demo is used: one user's history in, personalized images out.

    from research.pmg import PMG
    pmg = PMG.from_config("configs/mini/pmg.yaml")
    result = pmg.personalize(history=["s-cats-012", "s-cats-007"], target="s-food-003")
    result.preference_keywords, result.image, result.save("out/")

A request runs the method's two stages for one sample, with the stage code the split-wide runs use: the keyword
stage's prompts, answer cache and parsing (:class:`research.pmg.keywords.extract.Extractor`), then the generation
stage's conditioning, denoising and CLIP balancing (:func:`research.pmg.generate.run.prepare_sample`). Models load
on first use and stay loaded; every call runs the same static shapes (UNet calls of ``generate.micro_batch``
candidates, prompts padded as the stages pad them), so a second call compiles no graph.

Which images: a request whose history, target and conversation are a prepared sample's (``--user``, or the same
ids) *is* that sample: its keywords come from the keyword stage's file when it holds the sample, and its initial
noise from its place in the dataset, so its images are the split-wide generation's. Any other request draws its
noise from a hash of its content: the same request gives the same images.

The soft preference: ``generate.soft_checkpoint`` when set, else the newest checkpoint of the config's training
folder when there is one (what ``scripts/run_train.sh`` wrote), else none (keywords only; ``soft`` is false in
the result).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from research.pmg.api.request import (Entry, RequestError, check_conversation, check_history, check_n, resolve)
from research.pmg.api.result import Candidate, Personalized
from research.pmg.config import PMGConfig, load_config
from research.pmg.errors import short_repr
from research.pmg.examples import Example, render_history_prompt
from research.pmg.integrity import sha256_file
from research.pmg.layout import Layout
from research.pmg.records.samples import Item, PreparedData, Sample

if TYPE_CHECKING:
    from research.pmg.runtime import Runtime

METHODS = ("pmg", "no_personalization")
REQUEST_INDEX_BASE = 1 << 31  # request noise indices start here: above any prepared dataset's sample index
_process_runtime = None  # setup_runtime runs once per process


class PMG:
    """The models of one config, loaded on first use; :meth:`personalize` answers one request.

    Calls are serialised (one MindSpore graph runs at a time), so a server may call from several threads.
    """

    def __init__(self, cfg: PMGConfig, runtime: Runtime, *, soft_checkpoint: str | None = None,
                 prepare: bool = True, rows: int | None = None):
        self.cfg, self.runtime, self.rows = cfg, runtime, rows
        self.layout = Layout.of(cfg)
        self.soft_checkpoint = self._soft_checkpoint(soft_checkpoint)
        self._prepare = prepare
        self._data: PreparedData | None = None
        self._data_loaded = False
        self._by_content: dict[tuple, list[tuple[int, Sample]]] = {}  # (history, target, conversation) -> samples
        self._by_user: dict[str, Sample] = {}  # user id -> their last sample in generate.splits, in dataset order
        self._keywords_file: dict | None = None
        self._llm = None
        self._models = None
        self._unconditional: dict[str, Any] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, config: str | Path, overrides: Sequence[str] = (), *, runtime: Runtime | None = None,
                    soft_checkpoint: str | None = None, prepare: bool = True, rows: int | None = None) -> PMG:
        """Load ``config`` (with ``--set``-style ``overrides``); set up the runtime unless one is given.

        ``soft_checkpoint`` overrides the rule in the module docstring ("" = none); ``prepare`` runs the data stage
        when the config's prepared dataset is missing (item ids and users come from it). ``rows`` is the UNet call
        size: None is ``generate.micro_batch``, whose images equal the split-wide run's byte for byte; a smaller
        call (e.g. K x n, the candidates of one request) is faster, but its floats may differ in the last bits
        (measured on PMG-mini with 3: 3 of 12 candidates had other pixels, the same choices), and each size
        compiles its own graph.
        """
        global _process_runtime
        cfg = load_config(config, list(overrides))
        if runtime is None:
            if _process_runtime is None:
                from research.pmg.runtime import setup_runtime

                _process_runtime = setup_runtime(cfg.runtime)
            runtime = _process_runtime
        if rows is not None and not 1 <= rows <= 4096:
            raise RequestError(f"rows: must be in [1, 4096], got {rows}")
        return cls(cfg, runtime, soft_checkpoint=soft_checkpoint, prepare=prepare, rows=rows)

    # ---------------------------------------------------------------------------------------------------------------
    # The prepared dataset: item ids, users and their samples
    # ---------------------------------------------------------------------------------------------------------------
    @property
    def data(self) -> PreparedData | None:
        """The config's prepared dataset (prepared on first use when missing and ``prepare``), or None."""
        if not self._data_loaded:
            from research.pmg.records.samples import SUMMARY_FILE, load_prepared

            folder = self.layout.generate_data
            if not (folder / SUMMARY_FILE).is_file() and self._prepare and folder == self.layout.data:
                from research.pmg.data.prepare import prepare

                prepare(self.cfg.scenario, self.cfg.data, output_dir=self.cfg.runtime.output_dir, progress=False)
            self._data = load_prepared(folder) if (folder / SUMMARY_FILE).is_file() else None
            self._data_loaded = True
            # Looked up per request: indexed once, so a request costs the same on a dataset of millions of samples.
            for index, sample in enumerate(self._data.samples if self._data else []):
                key = (sample.history, sample.target, sample.conversation)
                self._by_content.setdefault(key, []).append((index, sample))
                if sample.split in self.cfg.generate.splits:
                    self._by_user[sample.user_id] = sample  # the user's last one
        return self._data

    @property
    def items(self) -> dict[str, Item]:
        return self.data.items if self.data else {}

    def users(self) -> list[str]:
        """User ids with a sample in ``generate.splits``, in dataset order (of each user's first such sample)."""
        self.data  # noqa: B018 (loads and indexes the dataset)
        return list(self._by_user)

    def user_sample(self, user_id: str) -> Sample:
        """The user's last sample in ``generate.splits`` (the one split-wide generation makes for them)."""
        self.data  # noqa: B018
        if user_id not in self._by_user:
            raise RequestError(f"user {short_repr(user_id)}: no sample in splits {self.cfg.generate.splits} of "
                               f"{self.layout.generate_data} ({len(self._by_user)} users there)")
        return self._by_user[user_id]

    def image_path(self, item_id: str) -> Path:
        if item_id not in self.items:
            raise RequestError(f"unknown item id {short_repr(item_id)}")
        return self.data.image_path(item_id)

    # ---------------------------------------------------------------------------------------------------------------
    # One request
    # ---------------------------------------------------------------------------------------------------------------
    def personalize(self, history: Sequence[Entry], target: Entry, conversation: Sequence[str] | None = None,
                    n: int | None = None, *, method: str = "pmg", base: Path | None = None) -> Personalized:
        """Keywords, K x n candidates with d_p, d_t, z, and the chosen image for one request.

        ``history`` lists item ids or free items (oldest first), ``target`` one of either; ``n`` images per weight
        set (default ``generate.images_per_set``); ``method`` ``pmg`` or ``no_personalization`` (the target
        keywords alone: the comparison image). ``base`` is where relative free-item image paths start.
        """
        if method not in METHODS:
            raise RequestError(f"method: {short_repr(method)} is not one of {list(METHODS)}")
        history = check_history(history)
        conversation = check_conversation(conversation)
        n = check_n(n)
        with self._lock:
            known = self.items
            resolved = [resolve(e, known, f"history[{i}]", base=base, free_id=f"request-h{i}")
                        for i, e in enumerate(history)]
            target_item, target_path = resolve(target, known, "target", base=base, free_id="request-t")
            if isinstance(target, str) and target in [e for e in history if isinstance(e, str)]:
                raise RequestError(f"target: item {short_repr(target)} is also in the history")
            items = {**known, **{item.id: item for item, _ in resolved}, target_item.id: target_item}
            history_items = [item for item, _ in resolved]
            history_paths = [path or self.data.image_path(item.id) for item, path in resolved]
            target_path = target_path or self.data.image_path(target_item.id)
            sample, index = self._sample(history_items, history_paths, target_item, target_path, conversation)
            preference, target_keywords = self._keywords(sample, items)
            example = Example(sample_id=sample.id, split=sample.split,
                              history_prompt=render_history_prompt([i.title for i in history_items]),
                              target_text=", ".join(target_keywords), preference_text=", ".join(preference),
                              target_image=target_path)
            gcfg = dataclasses.replace(self.cfg.generate, images_per_set=n or self.cfg.generate.images_per_set,
                                       preference_keywords=method == "pmg")
            candidates, chosen, soft = self._generate(gcfg, sample, example, index)
            from research.pmg.generate.run import run_settings

            settings = run_settings(self.cfg, gcfg if soft else dataclasses.replace(gcfg, soft_checkpoint=""))
            return Personalized(method=method, sample=sample.id, prepared=index < REQUEST_INDEX_BASE,
                                history=history_items, history_images=history_paths, target=target_item,
                                target_image=target_path, conversation=conversation,
                                preference_keywords=tuple(preference), target_keywords=tuple(target_keywords),
                                soft=soft, candidates=candidates, chosen=chosen, settings=settings)

    def _sample(self, history: list[Item], history_paths: list[Path], target: Item, target_path: Path,
                conversation: tuple[str, ...]) -> tuple[Sample, int]:
        """The prepared sample this request is (first in ``generate.splits``, else any), with its dataset index;
        else a request sample whose index comes from a hash of the request's content."""
        ids = tuple(item.id for item in history)
        self.data  # noqa: B018 (loads and indexes the dataset)
        matches = sorted(self._by_content.get((ids, target.id, conversation), []),
                         key=lambda pair: pair[1].split not in self.cfg.generate.splits)
        if matches:
            index, sample = matches[0]
            return sample, index
        content = [[item.to_json() | {"image": sha256_file(path)} for item, path in zip(history, history_paths)],
                   target.to_json() | {"image": sha256_file(target_path)}, list(conversation)]
        digest = hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        sample = Sample(id=f"request-{digest[:12]}", user_id="request", history=ids, target=target.id,
                        split="test", conversation=conversation)
        return sample, REQUEST_INDEX_BASE + int(digest[:7], 16)

    def _keywords(self, sample: Sample, items: dict[str, Item]) -> tuple[list[str], list[str]]:
        """(preference, target) keywords: the keyword stage's record of a prepared sample, else extracted now
        (through the stage's answer cache, so a repeated request asks the LLM nothing)."""
        record = self._keyword_records().get(sample.id)
        if record is not None and record.target == sample.target:
            return list(record.preference_keywords), list(record.target_keywords)
        from research.pmg import ownership
        from research.pmg.keywords.cache import AnswerCache
        from research.pmg.keywords.extract import Extractor
        from research.pmg.keywords.prompts import load_templates, resolve_templates

        kcfg = self.cfg.keywords
        templates = load_templates(resolve_templates(kcfg.templates, self.cfg.scenario))
        cache_dir = self.layout.keywords_cache
        with ownership.claim(cache_dir, "keywords", lock=False), AnswerCache(cache_dir, "api") as cache:
            record = Extractor(self._keyword_llm(), templates, kcfg, cache).run([sample], items)[0]
        return list(record["preference_keywords"]), list(record["target_keywords"])

    def _keyword_records(self) -> dict:
        if self._keywords_file is None:
            from research.pmg.records.keywords import load_keywords

            path = self.layout.generate_keywords
            self._keywords_file = load_keywords(path) if path.is_file() and self.data is not None else {}
        return self._keywords_file

    def _keyword_llm(self):
        if self._llm is None:
            from research.pmg.keywords.engine import KeywordLLM

            self._llm = KeywordLLM(self.cfg, self.cfg.keywords, self.runtime)
        return self._llm

    # ---------------------------------------------------------------------------------------------------------------
    # Generation
    # ---------------------------------------------------------------------------------------------------------------
    def _generation_models(self):
        if self._models is None:
            from research.pmg.generate.run import build_models

            gcfg = dataclasses.replace(self.cfg.generate, soft_checkpoint=self.soft_checkpoint)
            self._models = build_models(self.cfg, gcfg, self.runtime)
        return self._models

    def _generate(self, gcfg, sample: Sample, example: Example, index: int) -> tuple[list[Candidate], int, bool]:
        from research.pmg.generate.conditioning import unconditional_context
        from research.pmg.generate.pipeline import to_uint8
        from research.pmg.generate.run import prepare_sample

        models = self._generation_models()
        if not gcfg.preference_keywords:  # no personalization: neither keywords nor the soft preference
            models = dataclasses.replace(models, soft=None)
        key = "pmg" if gcfg.preference_keywords else "no_personalization"
        if key not in self._unconditional:
            self._unconditional[key] = unconditional_context(
                models.encode, gcfg.negative_for(self.cfg.scenario), models.soft.num_tokens if models.soft else 0,
                preference=gcfg.preference_keywords)
        job = prepare_sample(models, gcfg, sample, example, index=index, seed=self.cfg.runtime.seed)
        # One call size for every request: by default generate.micro_batch (padded), the call the split-wide run
        # makes whenever it has that many candidates in all, so the same compiled graph gives the same floats.
        rows = self.rows or models.pipeline.micro_batch
        images = to_uint8(next(models.pipeline.stream([(job.cond, job.latents)], self._unconditional[key], rows)))
        selection = models.scorer.choose(images, example.preference_text, example.target_text, gcfg.selection_a,
                                         gcfg.score_form)
        candidates = [Candidate(k=k, m=m, weights=tuple(float(w) for w in gcfg.weight_sets[k]),
                                seed=tuple(job.seeds[i]), image=images[i], d_p=float(selection.personalization[i]),
                                d_t=float(selection.accuracy[i]), z=float(selection.z[i]), chosen=i == selection.chosen)
                      for i, (k, m) in enumerate(job.keys)]
        return candidates, selection.chosen, job.soft

    def _soft_checkpoint(self, given: str | None) -> str:
        if given is not None:
            return given
        if self.cfg.generate.soft_checkpoint:
            return self.cfg.generate.soft_checkpoint
        from research.pmg.models.soft_preference import SOFT_FILE

        trained = any(self.layout.checkpoints.glob(f"step-*/{SOFT_FILE}"))
        return str(self.layout.train) if trained else ""

