"""The prepare stage: a scenario's raw files -> one prepared dataset folder (see :mod:`research.pmg.records.samples`).

    python -m research.pmg.data.prepare --scenario movielens --raw data/ml-latest-small --images data/posters \\
        --out output/movielens/data

With no ``--raw`` the bundled sample of the scenario is used, so the demo runs with nothing downloaded.
Settings are the config's (``--config``, a PMG YAML: its ``scenario``, ``runtime.output_dir`` and ``data:``
section) with ``--set key=value`` overrides; the flags name the scenario, inputs and output, each short for the
``--set`` of one field. Bad input ends with one line on stderr naming file, line and field, and exit code 2;
output appears only complete (:func:`staged_dir`).
"""
from __future__ import annotations

import argparse
import importlib
import dataclasses
import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from research.pmg import ownership, testhooks
from research.pmg.cli import USER_ERROR_EXIT, ArgumentParser, add_config_args, add_field_flag, field_overrides
from research.pmg.config import ConfigError, load_config
from research.pmg.config.data import DataConfig
from research.pmg.data.report import Report
from research.pmg.data.sampling import ReadResult
from research.pmg.errors import DataError, PMGError, error_line
from research.pmg.files import to_jsonl, write_atomic, write_synced
from research.pmg.layout import Layout, data_dir
from research.pmg.records.samples import (FORMAT_VERSION, IMAGES_DIR, ISSUES_FILE, ITEMS_FILE, SAMPLES_FILE, SPLITS,
                                          SUMMARY_FILE, Item, id_sort_key)
from research.pmg.scenarios import NAMES, Scenario, scenario as scenario_entry

SHOWN_ISSUES = 10  # printed on stderr; all of them go to issues.txt


def reader(entry: Scenario):
    """The data-stage function that reads ``entry``'s raw files (named ``module:function`` in the registry)."""
    module, function = entry.reader.split(":")
    return getattr(importlib.import_module(module), function)


def prepare(scenario: str, cfg: DataConfig, *, output_dir: str = "output", progress: bool = True
            ) -> tuple[dict[str, Any], Report]:
    """Turn the raw files of ``scenario`` into a prepared dataset; return its summary and the report.

    ``cfg.out`` empty means ``<output_dir>/data``. Raises :class:`DataError` for unusable input (always for a
    missing file or wrong header; for any defect when ``cfg.strict``) and when no sample could be made.
    """
    entry = scenario_entry(scenario)
    cfg.validate("data.")
    history_len, min_history = cfg.resolved_history_len(scenario), cfg.resolved_min_history(scenario)
    if min_history > history_len:
        raise ConfigError(f"data.min_history: {min_history} exceeds the history length {history_len}")
    raw = Path(cfg.raw) if cfg.raw else entry.raw_sample
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data folder not found")
    images = Path(cfg.images) if cfg.images else raw / IMAGES_DIR
    out = data_dir(cfg, output_dir)
    ownership.check(out, "prepare")  # before reading: a folder this project did not make is refused at once

    report = Report(cfg.strict)
    result = reader(entry)(raw, images, cfg, report, progress)
    _check_invariants(result)
    summary = _summary(scenario, cfg, history_len, min_history, result, report)
    if not result.samples:
        details = ", ".join(f"{k} {v}" for k, v in {**summary["issues"], **summary["skipped"]}.items()) or "no data"
        raise DataError(f"{raw}: no usable sample ({details})")

    items = [dataclasses.replace(result.items[i], image=f"{IMAGES_DIR}/{i}{result.images[i][1]}")
             for i in sorted(result.items, key=id_sort_key)]
    with ownership.staged(out, "prepare") as staging:
        (staging / IMAGES_DIR).mkdir()

        def copy(item: Item) -> None:
            write_synced(staging / item.image, result.images[item.id][0].read())

        # Threads overlap the fsync waits, which dominate copying on most disks.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in tqdm(pool.map(copy, items), total=len(items), desc="copy images", unit=" img", leave=False,
                          disable=None if progress else True):
                pass
        testhooks.hold("prepare", "images-copied")
        write_atomic(staging / ITEMS_FILE, to_jsonl([i.to_json() for i in items]))
        write_atomic(staging / SAMPLES_FILE, to_jsonl([s.to_json() for s in result.samples]))
        write_atomic(staging / ISSUES_FILE, "".join(f"{issue}\n" for issue in report.issues))
        write_atomic(staging / SUMMARY_FILE, _json(summary))
    return summary, report


def _check_invariants(result: ReadResult) -> None:
    """Properties every reader guarantees; a failure here is a bug, never a data problem."""
    for sample in result.samples:
        assert sample.history and sample.target not in sample.history, sample
        assert len(set(sample.history)) == len(sample.history), sample
        assert all(i in result.items and i in result.images for i in (*sample.history, sample.target)), sample


def _summary(scenario: str, cfg: DataConfig, history_len: int, min_history: int, result: ReadResult,
             report: Report) -> dict[str, Any]:
    splits = Counter(s.split for s in result.samples)
    issues = report.issue_counts()
    settings = {"history_len": history_len, "min_history": min_history, "min_rating": cfg.min_rating,
                "valid_fraction": cfg.valid_fraction, "test_fraction": cfg.test_fraction,
                "max_users": cfg.max_users, "seed": cfg.seed, "strict": cfg.strict}
    counts = {"users": len({s.user_id for s in result.samples}), "items": len(result.items),
              "samples": len(result.samples), **{name: splits[name] for name in SPLITS},
              "missing_images": issues.get("missing_image", 0), "unreadable_images": issues.get("unreadable_image", 0)}
    return {"format_version": FORMAT_VERSION, "scenario": scenario, "source_format": result.source_format,
            "settings": settings, "counts": counts, "issues": issues, "skipped": report.skip_counts()}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def format_summary(summary: dict[str, Any], out: Path) -> str:
    c = summary["counts"]
    lines = [f"prepared {summary['scenario']} ({summary['source_format']}) -> {out}",
             f"  users {c['users']}, items {c['items']}, samples {c['samples']} "
             f"(train {c['train']}, valid {c['valid']}, test {c['test']})",
             f"  missing images {c['missing_images']}, unreadable images {c['unreadable_images']}"]
    if summary["issues"]:
        lines.append("  issues: " + ", ".join(f"{k} {v}" for k, v in summary["issues"].items())
                     + f" (all in {out / ISSUES_FILE})")
    if summary["skipped"]:
        lines.append("  samples not made: " + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m research.pmg.data.prepare",
                       description="Turn a scenario's raw POG / MovieLens / sticker files into canonical samples "
                                   "(formats: research/pmg/data/README.md). Settings: the data: section of the "
                                   "config, changed with --set data.<field>=VALUE (see configs/ and "
                                   "research/pmg/config/data.py).")
    add_config_args(p, required=False)
    add_field_flag(p, "--scenario", "scenario", "required without --config", choices=NAMES)
    add_field_flag(p, "--raw", "data.raw", "raw data folder", metavar="DIR")
    add_field_flag(p, "--images", "data.images", "image folder or .pkl", metavar="PATH")
    add_field_flag(p, "--allow-pickle", "data.allow_pickle", "allow reading images from a pickle", nargs=0)
    add_field_flag(p, "--out", "data.out", "prepared dataset folder", metavar="DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = field_overrides(args)
        cfg = load_config(args.config, overrides)
        if not args.config and not any(item.strip().startswith("scenario=") for item in overrides):
            raise ConfigError("--scenario is required without --config")
        summary, report = prepare(cfg.scenario, cfg.data, output_dir=cfg.runtime.output_dir,
                                  progress=not args.no_progress)
    except (PMGError, OSError) as exc:  # bad input, unwritable output, full disk: one line, as every stage
        print(error_line(exc), file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    for issue in report.issues[:SHOWN_ISSUES]:
        print(f"warning: {issue}", file=sys.stderr)
    if len(report.issues) > SHOWN_ISSUES:
        print(f"warning: ... and {len(report.issues) - SHOWN_ISSUES} more", file=sys.stderr)
    print(format_summary(summary, Layout.of(cfg).data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
