"""Metric names in MLflow, laid out for a reviewer.

The MLflow UI makes one section per key prefix (up to the last ``/``) and sorts sections and the
charts in them alphabetically. The runner's own names (``train/loss``, ``grad_norm/<tensor>``,
what the code, ``checkpoint.best_metric`` and the report use) are therefore logged under display
names that sort the way a review goes, and that read well on the UI's default linear axis:

- sections carry a rank: ``1 train``, ``2 val``, ``3 grad_norm``, ``4 log10 update_ratio``,
  ``5 weight_std``, ... (what a reviewer needs first comes first);
- a tensor's charts carry its position in the network: ``3 grad_norm/00 hidden.weight``, so the
  charts of a section follow the network, input first;
- the update ratio, which spans orders of magnitude, is logged as its base-10 logarithm (the
  healthy band around 1e-3 reads as -4 .. -2).

:func:`display` maps a runner name to its MLflow name and value; :func:`internal` maps back.
"""
from __future__ import annotations

import math
import re

SECTIONS = {  # runner prefix -> MLflow section, in review order
    "train": "1 train", "val": "2 val", "grad_norm": "3 grad_norm", "update_ratio": "4 log10 update_ratio",
    "weight_std": "5 weight_std", "act_dead": "6 act_dead", "weight_norm": "7 weight_norm",
    "grad_maxabs": "8 grad_maxabs", "grad_std": "8 grad_std", "grad_mean": "8 grad_mean",
    "weight_mean": "9 weight_mean", "weight_min": "9 weight_min", "weight_max": "9 weight_max",
    "act_mean": "9 act_mean", "act_std": "9 act_std",
}
LOG10 = {"update_ratio"}
_BACK = {v: k for k, v in SECTIONS.items()}
_INDEXED = re.compile(r"^\d+ (.+)$")


class KeyNames:
    """Display names for one model: tensors and layers numbered in network order."""

    def __init__(self, order: list[str]):
        width = max(2, len(str(max(len(order) - 1, 0))))
        self.index = {name: f"{i:0{width}d} {name}" for i, name in enumerate(order)}
        self.cache: dict[str, tuple[str, bool]] = {}  # runner key -> (MLflow name, logged as log10)

    @classmethod
    def for_model(cls, tensors: list[str], layers: list[str]) -> "KeyNames":
        """Tensors numbered in network order, and layers (every named node) likewise."""
        names = cls(tensors)
        names.index.update(cls(layers).index)
        return names

    def display(self, key: str, value: float) -> tuple[str, float]:
        """The MLflow name and value of runner metric ``key``."""
        known = self.cache.get(key)
        if known is None:
            prefix, _, rest = key.partition("/")
            section = SECTIONS.get(prefix)
            name = key if section is None or not rest else f"{section}/{self.index.get(rest, rest)}"
            known = self.cache[key] = (name, prefix in LOG10)
        name, log10 = known
        if log10:
            value = math.log10(value) if value > 0 else (-math.inf if value == 0 else math.nan)
        return name, value


def display_all(names: KeyNames, metrics: dict[str, float]) -> dict[str, float]:
    return dict(names.display(k, v) for k, v in metrics.items())


def internal(name: str, value: float | None = None) -> tuple[str, float | None]:
    """The runner name (and value) of an MLflow metric the runner logged."""
    section, _, rest = name.rpartition("/")
    prefix = _BACK.get(section)
    if prefix is None:
        return name, value
    m = _INDEXED.match(rest)
    key = f"{prefix}/{m.group(1) if m else rest}"
    if value is not None and prefix in LOG10:
        value = 10.0 ** value if math.isfinite(value) else (0.0 if value == -math.inf else value)
    return key, value
