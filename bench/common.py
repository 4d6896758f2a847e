"""Helpers shared by the benchmarks: a fresh migrated MLflow store and interleaved timing."""
from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable


def fresh_store() -> tuple[str, object]:
    from mlflow import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="runner-bench-")) / "mlflow.db"
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


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
