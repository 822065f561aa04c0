"""The package's shape as a rule: the floor imports no stage, stages import only the floor, no import cycle.

Layers, lowest first (README "Layout"):

- floor: everything in research/pmg that is not a stage or a tool (config/, errors, files, records/, images,
  examples, checkpoints, scenarios, layout, runtime, models/, compat/, ...); it imports only itself;
- converters: the top-level ``ckpt_convert`` package; it imports only the floor (stages may call it);
- stages: research/pmg/{data,keywords,train,generate,evaluate}; each imports the floor, the converters and
  itself, never another stage;
- api: research/pmg/api, PMG as a library (one request through the keyword and generation stages); it imports
  stages, and the tools that serve requests (the demo) import it;
- tools: research/pmg/{pipeline,mini,plan,selftest,demo}: they drive stages, so they may import any stage,
  but not each other;
- the package itself (``research/pmg/__init__.py``) is the public front door: it may import only the api
  (``from research.pmg import PMG``), and no project module imports it.

Imports are read from the source (every ``import`` statement, including those inside functions), so a lazy
import cannot hide an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from research.pmg.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("research", "ckpt_convert")
STAGES = ("data", "keywords", "train", "generate", "evaluate")
TOOLS = ("pipeline", "mini", "plan", "selftest", "demo")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: ``from p import m`` counts as importing module ``p.m`` when it is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t.split(".")[0] in PACKAGES)
    return out


def layer(name: str) -> tuple[str, str]:
    """(layer, unit): the unit is the stage or tool package, or the layer itself."""
    parts = name.split(".")
    if name == "research.pmg":
        return "front", "front"
    if parts[:3] == ["research", "pmg", "api"]:
        return "api", "api"
    if parts[0] == "ckpt_convert":
        return "converters", "ckpt_convert"
    if len(parts) > 2 and parts[2] in STAGES:
        return "stages", parts[2]
    if len(parts) > 2 and parts[2] in TOOLS:
        return "tools", parts[2]
    return "floor", "floor"


ALLOWED = {"floor": {"floor"}, "converters": {"floor", "converters"},
           "stages": {"floor", "converters", "stages"}, "api": {"floor", "converters", "stages", "api"},
           "tools": {"floor", "converters", "stages", "api", "tools"}, "front": {"api"}}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {t for t in imported(name, path, known) if t in known} for name, path in known.items()}


def layering_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        (src_layer, src_unit) = layer(source)
        for target in sorted(targets):
            tgt_layer, tgt_unit = layer(target)
            if tgt_layer not in ALLOWED[src_layer]:
                bad.append(f"{source} ({src_layer}) imports {target} ({tgt_layer})")
            elif src_layer == tgt_layer and src_layer in ("stages", "tools") and src_unit != tgt_unit:
                bad.append(f"{source} imports {target}: one {src_layer[:-1]} imports another")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_floor_imports_no_stage_and_stages_import_only_the_floor():
    assert layering_violations(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_are_for():
    """The rules themselves, on small made-up graphs: each forbidden shape is reported."""
    assert layering_violations({"research.pmg.generate.run": {"research.pmg.train.build"}}) == [
        "research.pmg.generate.run imports research.pmg.train.build: one stage imports another"]
    assert layering_violations({"research.pmg.images": {"research.pmg.evaluate.run"}}) == [
        "research.pmg.images (floor) imports research.pmg.evaluate.run (stages)"]
    assert layering_violations({"ckpt_convert.lpips": {"research.pmg.evaluate.run"}}) == [
        "ckpt_convert.lpips (converters) imports research.pmg.evaluate.run (stages)"]
    assert layering_violations({"research.pmg.mini.sd_train": {"research.pmg.pipeline.runner"}}) == [
        "research.pmg.mini.sd_train imports research.pmg.pipeline.runner: one tool imports another"]
    assert layering_violations({"research.pmg.pipeline.users": {"research.pmg.evaluate.methods",
                                                                "research.pmg.config"}}) == []
    assert layering_violations({"research.pmg.generate.run": {"research.pmg.api.session"}}) == [
        "research.pmg.generate.run (stages) imports research.pmg.api.session (api)"]
    assert layering_violations({"research.pmg.files": {"research.pmg"}}) == [
        "research.pmg.files (floor) imports research.pmg (front)"]
    assert layering_violations({"research.pmg.demo.server": {"research.pmg.api.session"},
                                "research.pmg": {"research.pmg.api"}}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lazy_and_relative_imports_are_read():
    known = {"research.pmg.generate.x": ROOT, "research.pmg.train.build": ROOT, "research.pmg.train": ROOT}
    source = ("def f():\n    from research.pmg.train.build import g\n"
              "from . import x\n")
    path = ROOT / "research" / "pmg" / "generate" / "_probe_for_test.py"
    fake = type("P", (), {"name": path.name, "read_text": lambda self: source})()
    assert imported("research.pmg.generate._probe_for_test", fake, known) == {"research.pmg.train.build",
                                                                               "research.pmg.generate.x"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_scenario_is_one_reader_one_prompt_set_one_entry_and_one_config(name):
    """What adding a scenario takes (research/pmg/scenarios.py): each piece exists and is found from the entry."""
    import importlib

    from research.pmg.config import load_config
    from research.pmg.keywords.prompts import load_templates, resolve_templates

    entry = SCENARIOS[name]
    module, function = entry.reader.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    assert load_templates(resolve_templates("", name)).name
    assert entry.raw_sample.is_dir()
    configs = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if "scenario:" in p.read_text()
               and load_config(p).scenario == name]
    assert configs, f"no config in configs/ runs the {name} scenario"
