"""Warm start: load some parameters from earlier weights, after the init rules.

    init:
      warm_start:
        source: models:/d2l_mlp@best        # any REF (see runner.checkpoint.registry)
        include: ["hidden.*"]               # globs over the source's names (default: all)
        exclude: []
        rename:                             # regex renames, in order: source name -> model name
          - {pattern: "^hidden\\.", replace: "encoder."}
        allow_mismatch: false               # true: skip names/shapes that do not fit, and report them

Every loaded parameter's init report entry says where its values came from.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from runner import names as N
from runner.errors import ConfigError, Problem, Problems, did_you_mean

KEYS = {"source", "include", "exclude", "rename", "allow_mismatch"}


def check_warm_start(cfg: Any, path: str) -> list[Problem]:
    p = Problems()
    if not p.mapping(cfg, path, KEYS, " with a source"):
        return p.items
    if not isinstance(cfg.get("source"), str) or not cfg.get("source"):
        p.add(f"{path}.source", "missing required value (a checkpoint path, runs:/... or models:/...)")
    for key in ("include", "exclude"):
        v = cfg.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            p.add(f"{path}.{key}", "must be a list of globs")
    for i, r in enumerate(cfg.get("rename") or []):
        if not isinstance(r, dict) or not isinstance(r.get("pattern"), str) or not isinstance(r.get("replace"), str):
            p.add(f"{path}.rename[{i}]", "must be {pattern: REGEX, replace: TEXT}")
            continue
        try:
            re.compile(r["pattern"])
        except re.error as e:
            p.add(f"{path}.rename[{i}].pattern", f"is not a valid regular expression: {e}")
    return p.items


def apply_warm_start(net, cfg: dict, report, path: str = "init.warm_start", tracking_uri: str | None = None) -> None:
    from runner.checkpoint.registry import resolve_ref
    from runner.checkpoint.weights import check_finite, read_weights

    resolved = resolve_ref(cfg["source"], tracking_uri)
    tensors, _ = read_weights(resolved.weights)
    names = list(tensors)
    chosen = N.select(names, cfg.get("include") or ["*"])
    if cfg.get("exclude"):
        dropped = set(N.select(chosen, cfg["exclude"]))
        chosen = [n for n in chosen if n not in dropped]
    if not chosen:
        raise ConfigError([Problem(f"{path}.include", f"selects nothing in {resolved.description} "
                                   f"(it has {', '.join(names[:8])}{'...' if len(names) > 8 else ''})")])
    aliases = net.param_aliases()
    params = net.params()
    p = Problems()
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    skipped: list[str] = []
    for src in chosen:
        dst = src
        for r in cfg.get("rename") or []:
            dst = re.sub(r["pattern"], r["replace"], dst)
        canonical = aliases.get(dst)
        t = tensors[src]
        if canonical is None:
            msg = f"{src} -> {dst}: the model has no such parameter{did_you_mean(dst, aliases)}"
        elif tuple(t.shape) != tuple(params[canonical].shape):
            msg = f"{src} -> {dst}: shape {list(t.shape)} does not fit the model's {list(params[canonical].shape)}"
        elif canonical in plan:
            msg = f"{src} -> {dst}: {canonical} is already loaded from {plan[canonical][0]}"
        else:
            plan[canonical] = (src, t)
            continue
        (skipped.append(msg) if cfg.get("allow_mismatch") else p.add(path, msg))
    p.raise_if_any("warm start does not fit the model")
    check_finite({src: t for src, t in plan.values()}, resolved.description)
    entries = report.by_name()
    with torch.no_grad():
        for canonical, (src, t) in plan.items():
            params[canonical].copy_(t.to(params[canonical].dtype))
            entries[canonical].source = f"{cfg['source']}:{src}"
    report.warm_start = {"source": resolved.description, "loaded": {c: s for c, (s, _) in plan.items()},
                         "skipped": skipped}
