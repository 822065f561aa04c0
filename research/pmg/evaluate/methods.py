"""Where each method's generated images come from, and the runs that make them for baselines and sweeps.

The input of the evaluation is deliberately simple: per method, sample id -> image file, from either

- a folder of ``<sample id>.<png|jpg|jpeg|webp>``, or
- a JSONL manifest, one object per line with ``"sample"`` (the sample id) and ``"image"`` (a path, relative
  to the manifest's folder or absolute). The generation stage's ``generate/manifest.jsonl`` is one: each
  sample's record names its chosen image in ``"image"`` (``"chosen"`` is the index of that candidate). A
  manifest may instead list every candidate with ``"chosen": true/false``; then only the chosen line of a
  sample counts. :func:`read_manifest` is the one place that knows the generator's format.

A method with ``overrides`` is a separate run of the pipeline in ``<output_dir>/methods/<name>/``: its
``data``, ``keywords`` and (unless it retrains) ``train`` folders link to the main run's, and the cache is
shared, so generation with the overrides finds every input where it looks by default, with no knowledge
of the generation stage's settings here.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from research.pmg import ownership
from research.pmg.config.evaluate import EvaluateConfig
from research.pmg.errors import PMGError
from research.pmg.files import read_jsonl, write_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MANIFEST = Path("generate") / "manifest.jsonl"
LINKED = ("data", "keywords", "train")  # the main run's folders a method run reads
PLAN_FILE = "plan.json"  # in a method's run folder: the commands that made it, written after they all succeeded


class MethodImagesError(PMGError, ValueError):
    """A method's images cannot be found or its manifest is malformed; the message names file and line."""


@dataclass(frozen=True)
class MethodPlan:
    """One method: where its images are, and (for a run of its own) the folder and commands that make them."""

    name: str
    images: Path
    run_dir: Path | None = None  # None: the images exist already or come from the main run
    commands: tuple[tuple[str, ...], ...] = ()
    retrains: bool = False  # the run trains its own soft preference instead of linking the main run's

    def missing(self) -> bool:
        """No images yet, or (for a run of its own) images made by other commands than today's: a changed
        setting such as ``generate.soft_weight`` must not be scored from an older run's images."""
        return not self.images.exists() or (self.run_dir is not None and not self.current())

    def current(self) -> bool:
        stamp = self.run_dir / PLAN_FILE if self.run_dir is not None else None
        return stamp is None or (stamp.is_file() and stamp.read_text(encoding="utf-8") == self.stamp())

    def stamp(self) -> str:
        """The commands without the interpreter's path (a venv moved elsewhere makes the same images)."""
        return json.dumps([list(command[1:]) for command in self.commands], indent=1) + "\n"


def read_images(source: str | os.PathLike) -> dict[str, Path]:
    """``{sample id: image path}`` from a folder or a manifest (see the module docstring); every file exists."""
    source = Path(source)
    if source.is_dir():
        found: dict[str, Path] = {}
        for path in sorted(source.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                if path.stem in found:
                    raise MethodImagesError(f"{source}: two images for sample {path.stem!r}: {found[path.stem].name} "
                                            f"and {path.name}")
                found[path.stem] = path
        return found
    if source.is_file():
        return read_manifest(source)
    raise MethodImagesError(f"{source}: no such folder or manifest (generate the images first, or run the "
                            "evaluation with --run-methods)")


def read_manifest(path: Path) -> dict[str, Path]:
    """Sample id -> image of a JSONL manifest (see the module docstring); lines with ``"chosen": false`` skipped."""
    found: dict[str, Path] = {}
    hint = "an interrupted generation run? resuming it repairs its manifest"
    for where, obj in read_jsonl(path, MethodImagesError, hint):
        if not isinstance(obj, dict) or not isinstance(obj.get("sample"), str) \
                or not isinstance(obj.get("image"), str) or not obj["image"]:
            raise MethodImagesError(f"{where}: expected an object with string fields 'sample' and 'image'")
        chosen = obj.get("chosen")
        if chosen is not None and not isinstance(chosen, int):
            raise MethodImagesError(f"{where}: field 'chosen' must be true/false (a candidate's line) or an "
                                    "index (a sample's record, whose 'image' is the chosen one)")
        if chosen is False:  # a candidate that was not chosen is not the method's image
            continue
        if obj["sample"] in found:
            raise MethodImagesError(f"{where}: sample {obj['sample']!r} has a second image line")
        image = Path(obj["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise MethodImagesError(f"{where}: image {image} not found")
        found[obj["sample"]] = image
    return found


def plan_methods(ecfg: EvaluateConfig, *, output_dir: Path, main_images: Path, config: str,
                 overrides: list[str]) -> list[MethodPlan]:
    """Where each method's images are and, for methods with overrides, the train/generate commands of their run.

    ``main_images`` is the main run's manifest (``<generate out>/manifest.jsonl``): a method without a run of its own
    is scored from it.

    ``config`` and ``overrides`` are what this evaluation was started with; each method run adds
    ``evaluate.run_overrides``, its own overrides, its output folder and the shared cache. The combined
    overrides are validated here, so a misspelt key fails before anything runs.
    """
    from research.pmg.config import load_config

    plans = []
    for method in ecfg.all_methods():
        if method.images:
            plans.append(MethodPlan(method.name, Path(method.images)))
        elif not method.overrides and not method.retrain:
            plans.append(MethodPlan(method.name, main_images))
        else:
            run_dir = output_dir / "methods" / method.name

            def fill(item: str) -> str:
                return item.replace("{run_dir}", str(run_dir)).replace("{output_dir}", str(output_dir))

            settings = [*overrides, *map(fill, ecfg.run_overrides), *map(fill, method.overrides),
                        f"runtime.output_dir={run_dir}", f"runtime.cache_dir={output_dir / 'cache'}"]
            if load_config(config, settings).generate.out:  # the main run's own folder: the run writes its own
                settings.append("generate.out=")
            flags = ["--config", config, *(x for item in settings for x in ("--set", item))]
            stages = (("train", "generate") if method.trains else ("generate",))
            commands = tuple((sys.executable, "-m", f"research.pmg.{stage}", *flags) for stage in stages)
            plans.append(MethodPlan(method.name, run_dir / MANIFEST, run_dir, commands, method.trains))
    return plans


def run_method(plan: MethodPlan, *, output_dir: Path) -> None:
    """Make ``plan``'s run folder (links to the main run's inputs) and run its commands in order."""
    if plan.run_dir is None:
        return
    ownership.check(plan.run_dir, "method")  # a folder this project did not make is neither moved nor written
    if plan.run_dir.exists() and not plan.current():  # made with other settings: set aside, never mixed
        stale = plan.run_dir.with_name(f"{plan.run_dir.name}.stale-{int(time.time())}")
        while os.path.lexists(stale):
            stale = stale.with_name(stale.name + "+")
        with ownership.hold(plan.run_dir / ownership.LOCK, plan.run_dir):
            plan.run_dir.rename(stale)
        (stale / ownership.LOCK).unlink(missing_ok=True)  # the lock file went along
        print(f"[{plan.name}] settings changed since its run; old run moved to {stale}", flush=True)
    with ownership.claim(plan.run_dir, "method"):
        for name in LINKED:
            if name == "train" and plan.retrains:
                continue
            link, target = plan.run_dir / name, output_dir / name
            if target.exists() and not link.exists():
                link.symlink_to(os.path.relpath(target, plan.run_dir), target_is_directory=True)
        for command in plan.commands:
            print(f"[{plan.name}] {shlex.join(command)}", flush=True)
            result = subprocess.run(command)
            if result.returncode != 0:
                raise PMGError(f"method {plan.name}: {' '.join(command[1:3])} exited with code {result.returncode} "
                               f"(its output is above; logs under {plan.run_dir / 'log'})")
        if not plan.images.exists():
            raise PMGError(f"method {plan.name}: the run finished but wrote no {plan.images}")
        write_atomic(plan.run_dir / PLAN_FILE, plan.stamp())
