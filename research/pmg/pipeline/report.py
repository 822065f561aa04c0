"""The last stage: ``<output_dir>/report.md``, one page over every stage's own summary files (nothing recomputed).

Text read from those files or from the command line (paths, model ids, names) is escaped for Markdown
(:mod:`research.pmg.textsafe`); the evaluation's ``results.md`` is embedded as its writer escaped it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from research.pmg.config import PMGConfig
from research.pmg.files import write_atomic
from research.pmg.layout import Layout
from research.pmg.pipeline import users
from research.pmg.pipeline.stages import STAGE_NAMES
from research.pmg.records.keywords import summary_path
from research.pmg.textsafe import md, md_code

USERS_FIGURE = "users.png"
# Columns of the simulated-users figure: title -> evaluation method name.
USER_COLUMNS = {"no personalization": "no_personalization", "PMG": "pmg"}


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _last_train_record(path: Path) -> dict[str, Any]:
    last, last_eval = {}, None
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                last = json.loads(line)
                last_eval = last.get("eval_loss", last_eval)
    return {**last, "eval_loss": last_eval}


def render(cfg: PMGConfig, paths: Layout, timings: dict[str, float], config_path: str) -> str:
    data = _json(paths.data / "summary.json")
    keywords = _json(summary_path(paths.keywords))
    generated = _json(paths.generate / "summary.json")
    train = _last_train_record(paths.train / "train_log.jsonl")
    lines = [f"# PMG pipeline report: {md(cfg.scenario)}", "",
             f"- config: {md_code(config_path)}; output folder: {md_code(paths.root)}",
             f"- device {md(cfg.runtime.device)}, mode {md(cfg.runtime.mode)}, precision {md(cfg.runtime.precision)}, "
             f"seed {cfg.runtime.seed}", "", "## Stages", "", "| stage | seconds (last run) | output |",
             "|---|---|---|"]
    outputs = {"prepare": paths.data, "keywords": paths.keywords, "train": paths.checkpoints,
               "generate": paths.generate, "evaluate": paths.evaluate}
    for name in STAGE_NAMES[:-1]:
        lines.append(f"| {name} | {timings.get(name, 0.0):.1f} | "
                     f"{md_code(_short(outputs[name], paths.root), in_table=True)} |")
    counts = data.get("counts", {})
    c = {key: md(counts.get(key, "?")) for key in ("samples", "users", "items", "train", "valid", "test")}
    lines += ["", "## Data", "",
              f"{c['samples']} samples of {c['users']} users over {c['items']} items (train {c['train']}, "
              f"valid {c['valid']}, test {c['test']})"]
    kc = keywords.get("counts", {})
    kw = {key: md(kc.get(key, "?")) for key in ("samples", "ok", "partial", "failed")}
    lines += ["", "## Keywords", "",
              f"{kw['samples']} samples: ok {kw['ok']}, partial {kw['partial']}, failed {kw['failed']} "
              f"(model {md_code(keywords.get('model_id', '?'))})"]
    if kc.get("samples") and kc.get("failed") == kc.get("samples"):
        lines.append("(every answer unparseable: expected of a random-init LLM; real weights give keywords)")
    lines += ["", "## Training", ""]
    if train:
        eval_loss = train.get("eval_loss")
        lines.append(f"{md(train.get('step', '?'))} steps; last loss {train.get('loss', float('nan')):.4f}"
                     + (f", held-out loss {eval_loss:.4f}" if eval_loss is not None else ""))
    if generated:
        chosen = generated.get("chosen_mean", {})
        lines += ["", "## Generation", "",
                  f"{md(generated.get('samples', '?'))} samples, {md(generated.get('candidates', '?'))} candidates; "
                  "chosen: " + ", ".join(f"mean {md(k)} {v:.4f}" for k, v in chosen.items() if v is not None)
                  + "; picks per (w_p,w_t): " + ", ".join(f"({md(k)}) {md(v)}" for k, v in
                                                          generated.get("picks_per_weight_set", {}).items())]
    results = paths.evaluate / "results.md"
    if results.is_file():
        body = results.read_text(encoding="utf-8").splitlines()
        lines += ["", "## Evaluation", "", f"From {md_code(_short(results, paths.root))} (gallery: "
                  f"{md_code(_short(paths.evaluate / 'gallery.html', paths.root))}):", ""]
        lines += [("#" + line) if line.startswith("#") else line for line in body[1:]]
    lines += _users_section(paths)
    written = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines += ["", f"_Written {written} by `python -m research.pmg.pipeline`._", ""]
    return "\n".join(lines)


def _users_section(paths: Layout) -> list[str]:
    """The simulated users' figure (written beside the report) and its table, when the evaluation has both methods."""
    evaluation = _json(paths.evaluate / "summary.json")
    if not all(m in (evaluation.get("methods") or {}) for m in USER_COLUMNS.values()):
        return []
    from research.pmg.records.samples import load_prepared
    from research.pmg.records.keywords import load_keywords

    data = load_prepared(paths.data)
    rows = users.user_rows(data, evaluation, load_keywords(paths.keywords), USER_COLUMNS)
    if not rows:
        return []
    write_atomic(paths.root / USERS_FIGURE, users.figure(rows, data))
    return ["", *users.markdown(rows, data, USERS_FIGURE)]


def write_report(cfg: PMGConfig, paths: Layout, timings: dict[str, float], config_path: str) -> Path:
    write_atomic(paths.report, render(cfg, paths, timings, config_path))
    return paths.report


def _short(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
