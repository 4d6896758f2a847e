"""The ``train`` group's schema check."""
from __future__ import annotations

from typing import Any

from runner.errors import Problem, Problems, did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "exponential")
LOSSES = ("auto", "mse", "l1", "cross_entropy")
DEVICES = ("auto", "cpu", "cuda")
POLICIES = ("skip", "abort_after", "abort")
PROGRESS = ("auto", "bar", "quiet")
TRAIN_KEYS = {"optimizer", "lr", "optimizer_args", "schedule", "schedule_args", "epochs", "max_steps",
              "grad_clip", "loss", "device", "nonfinite", "progress", "resume"}


def _choice(p: Problems, cfg: dict, key: str, choices, path: str, nullable: bool = False) -> None:
    v = cfg.get(key)
    if v is None and nullable:
        return
    if v not in choices:
        p.add(f"{path}.{key}", f"unknown value {v!r}{did_you_mean(str(v), choices)}; choose one of {', '.join(choices)}"
              + (" or null" if nullable else ""))


def check_train(cfg: Any, path: str = "train") -> list[Problem]:
    p = Problems()
    if not p.mapping(cfg, path, TRAIN_KEYS):
        return p.items
    _choice(p, cfg, "optimizer", OPTIMIZERS, path)
    _choice(p, cfg, "schedule", SCHEDULES, path, nullable=True)
    _choice(p, cfg, "loss", LOSSES, path)
    _choice(p, cfg, "device", DEVICES, path)
    _choice(p, cfg, "progress", PROGRESS, path)
    p.number(cfg, "lr", path, integer=False)
    p.number(cfg, "epochs", path)
    p.number(cfg, "max_steps", path, nullable=True)
    p.number(cfg, "grad_clip", path, integer=False, nullable=True)
    for key in ("optimizer_args", "schedule_args"):
        if not isinstance(cfg.get(key) or {}, dict):
            p.add(f"{path}.{key}", "must be a mapping of argument names to values")
    resume = cfg.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume):
        p.add(f"{path}.resume", f"must be null, auto, a path or an MLflow run id, got {resume!r}")
    nf = cfg.get("nonfinite") or {}
    if not isinstance(nf, dict):
        p.add(f"{path}.nonfinite", "must be a mapping with policy and patience")
    else:
        p.unknown_keys(nf, ("policy", "patience"), f"{path}.nonfinite")
        _choice(p, {"policy": nf.get("policy", "abort_after")}, "policy", POLICIES, f"{path}.nonfinite")
        p.number(nf, "patience", f"{path}.nonfinite")
    return p.items
