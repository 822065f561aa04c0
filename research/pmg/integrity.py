"""Checksums that make a damaged file fail loudly instead of being loaded (sidecar files, folder digests), and
cheap fingerprints that tell when files were replaced.

A checkpoint ``x.ckpt`` written with :func:`write_sidecar` gets ``x.ckpt.sha256`` beside it; every loader
calls :func:`verify_sidecar` first, so a file changed after it was written (a flipped bit, a truncated copy,
an edit) raises :class:`CorruptFileError` naming the file, and is never read silently. Files without a
sidecar (converted weights, older checkpoints) load as before.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from research.pmg.errors import PMGError

SIDECAR_SUFFIX = ".sha256"


class CorruptFileError(PMGError):
    """A file does not match the checksum recorded when it was written."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: str | os.PathLike) -> Path:
    """Record ``path``'s SHA-256 in ``<path>.sha256`` (written whole and fsynced before the rename)."""
    side = sidecar_path(path)
    tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{sha256_file(path)}  {Path(path).name}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, side)
    return side


def verify_sidecar(path: str | os.PathLike, what: str = "") -> bool:
    """Check ``path`` against its sidecar; ``False`` when there is none, :class:`CorruptFileError` on a mismatch."""
    side = sidecar_path(path)
    if not side.is_file():
        return False
    expected = side.read_text(encoding="ascii", errors="replace").split()[:1]
    actual = sha256_file(path)
    if expected != [actual]:
        label = f"{what} " if what else ""
        raise CorruptFileError(f"{label}{path}: checksum mismatch (recorded {(expected or ['nothing'])[0][:12]}..., "
                               f"file has {actual[:12]}...): the file changed or was damaged after it was written; "
                               "delete it (or its checkpoint folder) to rebuild it")
    return True


def files_fingerprint(roots: list[Path]) -> list:
    """Names, sizes and modification times of every file at ``roots`` (a file, or the files under a folder):
    cheap, and it changes when a file is replaced or rewritten; reading contents is the stages' job."""
    out = []
    for root in roots:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.exists() else []
        out.append([str(root.resolve()), [[str(p.relative_to(root)) if p != root else p.name, p.stat().st_size,
                                           p.stat().st_mtime_ns] for p in files]])
    return out
