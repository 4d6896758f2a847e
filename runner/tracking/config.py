"""The ``tracking`` group: schema check and the default store location."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runner.errors import Problem, Problems, did_you_mean
from runner.tracking.stats import GRAD_STATS, WEIGHT_STATS

KEYS = {"enabled", "uri", "experiment", "run_name", "every_n_steps", "stats", "activations", "histograms",
        "max_keys", "queue_size", "system_metrics", "http_timeout_s", "drain_timeout_s"}
STATS_KEYS = {"weights", "grads", "update_ratio"}
HIST_KEYS = {"enabled", "sample", "bins", "every_n_epochs"}


def client(uri: str | None = None):
    """An ``MlflowClient`` on ``uri`` (default: ``default_uri()``), MLflow's INFO chatter off."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    from mlflow import MlflowClient

    return MlflowClient(uri or default_uri())


def default_uri(base: Path | None = None) -> str:
    """``sqlite:////abs/outputs/mlflow.db`` under ``base`` (the launch directory)."""
    path = ((base or Path.cwd()) / "outputs" / "mlflow.db").resolve()
    return f"sqlite:///{path}"


def check_tracking(cfg: Any, path: str = "tracking") -> list[Problem]:
    p = Problems()
    if not p.mapping(cfg, path, KEYS):
        return p.items
    for key in ("every_n_steps", "max_keys", "queue_size", "http_timeout_s", "drain_timeout_s"):
        p.number(cfg, key, path)
    if not isinstance(cfg.get("experiment", "runner"), str) or not cfg.get("experiment", "runner"):
        p.add(f"{path}.experiment", "must be a non-empty string")
    stats = cfg.get("stats") or {}
    if not isinstance(stats, dict):
        p.add(f"{path}.stats", "must be a mapping with weights, grads, update_ratio")
    else:
        p.unknown_keys(stats, STATS_KEYS, f"{path}.stats")
        for key, allowed in (("weights", WEIGHT_STATS), ("grads", GRAD_STATS)):
            for s in stats.get(key) or []:
                if s not in allowed:
                    p.add(f"{path}.stats.{key}", f"unknown statistic {s!r}{did_you_mean(str(s), allowed)}; "
                          f"choose from {', '.join(allowed)}")
    hist = cfg.get("histograms") or {}
    if not isinstance(hist, dict):
        p.add(f"{path}.histograms", "must be a mapping")
    else:
        p.unknown_keys(hist, HIST_KEYS, f"{path}.histograms")
        for key in ("sample", "bins"):
            p.number(hist, key, f"{path}.histograms")
        p.number(hist, "every_n_epochs", f"{path}.histograms", zero_ok=True, nullable=True)
    return p.items
