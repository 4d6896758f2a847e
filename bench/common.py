"""Helpers shared by the benchmarks: a fresh migrated MLflow store and interleaved timing."""
from __future__ import annotations

import atexit
import gc
import os
import shutil

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable


def fresh_store() -> tuple[str, object]:
    """A migrated sqlite store in a temporary folder, removed when the benchmark exits."""
    from mlflow import MlflowClient

    folder = tempfile.mkdtemp(prefix="runner-bench-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    client.search_experiments()  # migrate now, not inside a timed section
    return uri, client


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median seconds of each variant, run A B C A B C ... so machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def paired(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, tuple[float, float, float, float]]:
    """Per variant: (median seconds, median ratio, lowest ratio, highest ratio), the ratios taken
    within each round against the first variant's run of that round: a slow drift in the
    machine's load then cancels out of each ratio, and the range shows what is left of the noise.
    Each round starts with a different variant, so that none always runs right after the same one
    (a heavy run leaves caches cold and its writer process finishing for the next)."""
    for fn in variants.values():  # one unrecorded round: first-call costs (lazy imports, caches) go here
        fn()
    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(variants[name]())
    base = times[next(iter(variants))]
    out = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        out[name] = (statistics.median(ts), statistics.median(ratios), min(ratios), max(ratios))
    return out


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes, from a collected heap: garbage a previous run left is not collected
    on this run's clock."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
