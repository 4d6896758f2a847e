"""Crash-safe checkpoint storage in a folder of committed entries.

Writing an entry: a temporary folder beside the others (same filesystem, so the rename is
atomic) receives the files, each fsync'ed; then ``manifest.json`` (step, metrics, SHA-256 and
size of every file) is written and fsync'ed last, the folder is renamed into place and the parent
folder fsync'ed; then the ``latest`` pointer is replaced atomically; then old entries are pruned
(keep the last K, plus the best by a metric), manifest first, so a half-deleted entry is never
taken for a committed one. An entry counts only if its manifest exists and every checksum
matches; on start-up, temporary and uncommitted entries are removed. A kill at any moment leaves
the previous checkpoint loadable.

``RUNNER_FAULT=checkpoint:<stage>:<step>`` kills the process (SIGKILL) at a stage of the write
(``files``, ``manifest``, ``rename``, ``latest``) for the given step: the crash tests use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runner.checkpoint.weights import CheckpointError

MANIFEST = "manifest.json"
LATEST = "latest"
PREFIX = "step-"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fault(stage: str, step: int) -> None:
    spec = os.environ.get("RUNNER_FAULT", "")
    if spec == f"checkpoint:{stage}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Entry:
    path: Path
    step: int
    metrics: dict[str, float]
    files: dict[str, dict]


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a committed checkpoint (no {MANIFEST})") from None
    except (json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"{path / MANIFEST} is unreadable: {e}") from None


def verify(path: Path) -> Entry:
    """The entry at ``path`` if its manifest is present and every file matches its checksum."""
    m = read_manifest(path)
    for name, info in m.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if f.stat().st_size != info["bytes"] or sha256(f) != info["sha256"]:
            raise CheckpointError(f"{path}: {name} does not match its checksum (truncated or corrupted)")
    return Entry(path, int(m["step"]), dict(m.get("metrics") or {}), m["files"])


class CheckpointStore:
    def __init__(self, folder: Path, keep_last: int = 3, keep_best: int = 1, best_metric: str | None = "val/loss",
                 best_mode: str = "min"):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.best_mode = best_mode

    # reading -----------------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Committed entries, oldest first (those with a manifest; checksums are checked on load)."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in sorted(self.folder.glob(f"{PREFIX}*")):
            if p.is_dir() and (p / MANIFEST).is_file():
                try:
                    m = read_manifest(p)
                    out.append(Entry(p, int(m["step"]), dict(m.get("metrics") or {}), m["files"]))
                except (CheckpointError, KeyError, ValueError):
                    continue
        return sorted(out, key=lambda e: e.step)

    def latest(self) -> Entry | None:
        """The entry the ``latest`` pointer names, if it verifies; else the newest committed entry
        that does. Entries passed over as damaged are listed in ``self.skipped``."""
        self.skipped: list[str] = []
        pointer = self.folder / LATEST
        named = None
        try:
            named = self.folder / pointer.read_text().strip()
        except OSError:
            pass
        candidates = [e.path for e in reversed(self.entries())]
        if named is not None and named.is_dir() and (named / MANIFEST).is_file():
            candidates = [named, *[c for c in candidates if c != named]]
        for path in candidates:
            try:
                return verify(path)
            except CheckpointError as e:
                self.skipped.append(f"{path.name}: {e}")
        return None

    def best(self) -> Entry | None:
        scored = [e for e in self.entries() if self.best_metric and self.best_metric in e.metrics]
        if not scored:
            return None
        pick = min if self.best_mode == "min" else max
        return pick(scored, key=lambda e: e.metrics[self.best_metric])

    # writing -----------------------------------------------------------------------------------
    def clean(self) -> list[str]:
        """Remove temporary and uncommitted entries (left by a crash); returns what was removed."""
        removed = []
        if not self.folder.is_dir():
            return removed
        for p in self.folder.iterdir():
            if ".tmp-" in p.name or (p.is_dir() and p.name.startswith(PREFIX) and not (p / MANIFEST).is_file()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed

    def save(self, step: int, write: Callable[[Path], None], metrics: dict[str, float] | None = None) -> Entry:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{PREFIX}{step:08d}"
        tmp = self.folder / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
        files = {}
        for f in sorted(tmp.iterdir()):
            _fsync_file(f)
            files[f.name] = {"sha256": sha256(f), "bytes": f.stat().st_size}
        _fault("files", step)
        manifest = {"step": step, "metrics": metrics or {}, "files": files, "created": time.time()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        _fault("manifest", step)
        final = self.folder / name
        if final.exists():  # the same step written again after a resume: swap it out safely
            old = self.folder / f".{name}.old.tmp-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.folder)
        _fault("rename", step)
        self._point_latest(name)
        _fault("latest", step)
        self.prune()
        return Entry(final, step, metrics or {}, files)

    def _point_latest(self, name: str) -> None:
        tmp = self.folder / f".{LATEST}.tmp-{os.getpid()}"
        tmp.write_text(name + "\n")
        _fsync_file(tmp)
        os.replace(tmp, self.folder / LATEST)
        _fsync_dir(self.folder)

    def prune(self) -> None:
        entries = self.entries()
        keep = {e.path for e in entries[-self.keep_last:]} if self.keep_last > 0 else set()
        if self.keep_best > 0 and self.best_metric:
            scored = [e for e in entries if self.best_metric in e.metrics]
            scored.sort(key=lambda e: e.metrics[self.best_metric], reverse=self.best_mode == "max")
            keep |= {e.path for e in scored[: self.keep_best]}
        for e in entries:
            if e.path not in keep:
                (e.path / MANIFEST).unlink(missing_ok=True)  # uncommit first
                shutil.rmtree(e.path, ignore_errors=True)
