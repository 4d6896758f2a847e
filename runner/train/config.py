"""The ``train`` group's schema check."""
from __future__ import annotations

from typing import Any

from runner.errors import Problem, Problems


def check_train(cfg: Any, path: str = "train") -> list[Problem]:
    p = Problems()
    if not isinstance(cfg, dict):
        p.add(path, "must be a mapping")
    return p.items
