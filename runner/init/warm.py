"""Warm start: load some parameters from earlier weights, after the init rules.

    init:
      warm_start:
        source: models:/d2l_mlp@best        # any REF (see runner.checkpoint.registry)
        include: ["hidden.*"]               # globs over the source's names (default: all)
        exclude: []
        rename:                             # regex renames, in order: source name -> model name
          - {pattern: "^hidden\\.", replace: "encoder."}
        kind: all                           # all | param | buffer (e.g. batch-norm running statistics)
        allow_mismatch: false               # true: skip names/shapes that do not fit, and report them

Every loaded parameter's init report entry says where its values came from.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

import torch

from pydantic import Field, field_validator

from runner import names as N
from runner.errors import ConfigError, Problem, Problems, did_you_mean
from runner.schema import Noun, Schema, Text

class Rename(Schema):
    pattern: Text = Field(description="a regular expression over source names")
    replace: str = Field(description="its replacement (\\1 for groups)")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v):
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"is not a valid regular expression: {e}") from None
        return v


class WarmStart(Schema):
    """Load tensors from earlier weights after the init rules."""

    source: Text = Field(description="a checkpoint path, runs:/... or models:/...")
    include: Optional[list[str]] = Field(None, description="globs over the source's names (default: all)")
    exclude: list[str] = Field(default_factory=list, description="globs over the source's names to leave out")
    rename: list[Rename] = Field(default_factory=list, description="regex renames, in order: source -> model name")
    kind: Annotated[Literal["all", "param", "buffer"], Noun("kind")] = Field(
        "all", description="load parameters, buffers (e.g. batch-norm statistics) or both")
    allow_mismatch: bool = Field(False, description="skip names or shapes that do not fit, and report them")


def check_warm_start(cfg: Any, path: str) -> list:
    return WarmStart.parse(cfg, path)[1]


def apply_warm_start(net, cfg: WarmStart, report, path: str = "init.warm_start", tracking_uri: str | None = None) -> None:
    from runner.checkpoint.registry import read_ref
    from runner.checkpoint.weights import check_finite

    from runner.checkpoint.weights import CheckpointError

    try:
        tensors, _, description = read_ref(cfg.source, tracking_uri)
    except CheckpointError as e:
        raise CheckpointError(f"{path}.source: {e}") from None
    names = list(tensors)
    chosen = N.select(names, cfg.include or ["*"])
    if cfg.exclude:
        dropped = set(N.select(chosen, cfg.exclude))
        chosen = [n for n in chosen if n not in dropped]
    aliases = {**net.param_aliases(), **net.buffer_aliases()}
    roles = {**{n: "param" for n in net.param_aliases()}, **{n: "buffer" for n in net.buffer_aliases()}}
    targets = net.tensors()
    p = Problems()
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    skipped: list[str] = []
    for src in chosen:
        dst = src
        for r in cfg.rename:
            dst = re.sub(r.pattern, r.replace, dst)
        canonical = aliases.get(dst)
        if canonical is not None and cfg.kind != "all" and roles[dst] != cfg.kind:
            continue  # a buffer when only parameters are loaded, or the reverse
        t = tensors[src]
        if canonical is None:
            msg = f"{src} -> {dst}: the model has no such parameter or buffer{did_you_mean(dst, aliases)}"
        elif tuple(t.shape) != tuple(targets[canonical].shape):
            msg = f"{src} -> {dst}: shape {list(t.shape)} does not fit the model's {list(targets[canonical].shape)}"
        elif canonical in plan:
            msg = f"{src} -> {dst}: {canonical} is already loaded from {plan[canonical][0]}"
        else:
            plan[canonical] = (src, t)
            continue
        (skipped.append(msg) if cfg.allow_mismatch else p.add(path, msg))
    p.raise_if_any("warm start does not fit the model")
    if not plan and not skipped:
        raise ConfigError([Problem(f"{path}.include", f"selects nothing (kind: {cfg.kind}) in {description} "
                                   f"(it has {', '.join(names[:8])}{'...' if len(names) > 8 else ''})")])
    check_finite({src: t for src, t in plan.values()}, description)
    entries = report.by_name()
    with torch.no_grad():
        for canonical, (src, t) in plan.items():
            targets[canonical].copy_(t.to(targets[canonical].dtype))
            entries[canonical].source = f"{cfg.source}:{src}"
    report.warm_start = {"source": description, "loaded": {c: s for c, (s, _) in plan.items()},
                         "skipped": skipped}
