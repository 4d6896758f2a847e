"""Whole-config validation: one pass over every group, every problem reported at once.

Each group's module owns the check for its part of the config (``check_model`` in
``runner.model``, ``check_data`` in ``runner.data``, ...); this module runs them all and adds the
checks that belong to no group (top-level keys, ``task``, values left ``???``).
"""
from __future__ import annotations

from typing import Any, Callable

from runner.errors import ConfigError, Problem, Problems, did_you_mean, first_line

TASKS = ("train", "inspect")
TOP_KEYS = {"task", "seed", "inspect", "model", "init", "data", "train", "tracking", "checkpoint"}
Checker = Callable[[Any, str], list[Problem]]


def _checkers() -> dict[str, Checker]:
    from runner.checkpoint.checkpointer import check_checkpoint
    from runner.data import check_data
    from runner.init import check_init
    from runner.model import check_model
    from runner.tracking.config import check_tracking
    from runner.train.config import check_train

    return {"model": check_model, "data": check_data, "init": check_init,
            "train": check_train, "tracking": check_tracking, "checkpoint": check_checkpoint}


def to_plain(cfg: Any) -> dict:
    """A resolved plain-dict copy of an OmegaConf config (or a dict), reporting what cannot resolve."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    p = Problems()
    for key in sorted(OmegaConf.missing_keys(cfg)):
        p.add(key, "missing required value (set it on the command line, e.g. " f"{key}=...)")
    p.raise_if_any()
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError([Problem(getattr(e, "full_key", "") or "", first_line(e))]) from None


def validate(cfg: Any) -> dict:
    """Check the whole config; return it as a resolved plain dict or raise ConfigError."""
    plain = to_plain(cfg)
    p = Problems()
    p.unknown_keys(plain, TOP_KEYS, "")
    task = plain.get("task", "train")
    if task not in TASKS:
        p.add("task", f"unknown task {task!r}{did_you_mean(str(task), TASKS)}; choose one of {', '.join(TASKS)}")
    p.number(plain, "seed", "", zero_ok=True)
    for section, check in _checkers().items():
        if section in plain:
            p.extend(check(plain[section], section))
    p.raise_if_any()
    return plain
