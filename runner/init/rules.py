"""Init rules: which initializer sets which parameter, applied once per tensor, with a report.

``init.rules`` is an ordered list. A rule selects parameters by any combination of

- ``params``: a glob (or list of globs) over dotted parameter names (see ``runner.names``),
- ``layer``: the config type of the owning layer (``linear``, ``layernorm``, ...),
- ``kind``: the parameter's own name within its layer (``weight``, ``bias``),

and names an ``init`` (a built-in or a dotted path to user code) with ``args``. **Later rules
override earlier ones**: each parameter is initialised exactly once, by the last rule that
selects it; parameters no rule selects get their layer's torch default and are reported as
``default``. A rule that selects nothing is an error unless ``allow_unmatched`` is set (on the
rule or for the whole group). Every parameter draws from its own generator, seeded from the run
seed and its canonical name, so values do not depend on construction order.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from runner import names as N
from runner.errors import ConfigError, Problem, Problems, did_you_mean, first_line, one_of
from runner.init import initializers as I
from runner.model.build import Network
from runner.model.layers import all_type_names, canonical_type

INIT_KEYS = {"rules", "edits", "allow_unmatched", "warm_start"}
RULE_KEYS = {"name", "params", "layer", "kind", "init", "args", "allow_unmatched"}


def stream_seed(seed: int, name: str) -> int:
    """The seed of a parameter's own random stream: a hash of the run seed and its name."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator_for(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, name))


# --- validation ------------------------------------------------------------------------------

def check_init(cfg: Any, path: str = "init") -> list[Problem]:
    from runner.init.edits import check_edits

    p = Problems()
    if not p.mapping(cfg, path, INIT_KEYS):
        return p.items
    rules = cfg.get("rules") or []
    if not isinstance(rules, list):
        p.add(f"{path}.rules", "must be a list of rules")
        rules = []
    for i, rule in enumerate(rules):
        _check_rule(rule, f"{path}.rules[{i}]", p)
    p.extend(check_edits(cfg.get("edits") or [], f"{path}.edits"))
    if cfg.get("warm_start") is not None:
        from runner.init.warm import check_warm_start

        p.extend(check_warm_start(cfg["warm_start"], f"{path}.warm_start"))
    return p.items


def _check_rule(rule: Any, path: str, p: Problems) -> None:
    if not p.mapping(rule, path, RULE_KEYS, " with an 'init'"):
        return
    name = rule.get("init")
    if not name:
        p.add(f"{path}.init", f"missing required value (one of {one_of(I.BUILTINS)}, {I.DEFAULT}, or a dotted path)")
    elif name != I.DEFAULT:
        try:
            fn = I.resolve(str(name))
        except (LookupError, ImportError, AttributeError, TypeError, ValueError):
            hint = did_you_mean(str(name), [*I.BUILTINS, I.DEFAULT])
            p.add(f"{path}.init", f"unknown initializer {name!r}{hint}; built-ins: {one_of(I.BUILTINS)}, "
                  f"{I.DEFAULT}; or a dotted path to an importable function or class")
        else:
            args = rule.get("args") or {}
            if not isinstance(args, dict):
                p.add(f"{path}.args", "must be a mapping of argument names to values")
            else:
                for msg in I.arg_problems(str(name), fn, args):
                    p.add(f"{path}.args", msg)
    if "layer" in rule and rule["layer"] is not None:
        types = all_type_names()
        for t in _as_list(rule["layer"]):
            if t not in types:
                p.add(f"{path}.layer", f"unknown layer type {t!r}{did_you_mean(str(t), types)}")
    for key in ("params", "kind"):
        v = rule.get(key)
        if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
            p.add(f"{path}.{key}", f"must be a string or a list of strings, got {v!r}")


def _as_list(v: Any) -> list:
    return [v] if isinstance(v, str) else list(v or [])


# --- application -----------------------------------------------------------------------------

@dataclass
class InitEntry:
    """How one parameter (one tensor; aliases listed) got its initial value."""

    name: str
    aliases: list[str]
    shape: list[int]
    rule: str            # "rules[2]" / the rule's name, or "default"
    init: str            # initializer name or description
    args: dict = field(default_factory=dict)
    source: str = "init"  # "init", or where warm-started weights came from
    edits: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0


@dataclass
class InitReport:
    seed: int
    entries: list[InitEntry]
    warm_start: dict | None = None  # source, loaded (parameter -> source name), skipped

    def by_name(self) -> dict[str, InitEntry]:
        return {e.name: e for e in self.entries}

    def to_dict(self) -> dict:
        out = {"seed": self.seed, "parameters": [asdict(e) for e in self.entries]}
        if self.warm_start is not None:
            out["warm_start"] = self.warm_start
        return out

    def refresh_stats(self, net: Network) -> None:
        params = net.params()
        for e in self.entries:
            t = params[e.name].detach().float()
            e.mean, e.min, e.max = t.mean().item(), t.min().item(), t.max().item()
            e.std = t.std().item() if t.numel() > 1 else 0.0


def _rule_label(rule: dict, i: int) -> str:
    return str(rule.get("name") or f"rules[{i}]")


def _selects(rule: dict, name: str, layer_type: str) -> bool:
    if rule.get("params") is not None and not any(N.matches(name, g) for g in _as_list(rule["params"])):
        return False
    if rule.get("layer") is not None and layer_type not in {canonical_type(t) for t in _as_list(rule["layer"])}:
        return False
    if rule.get("kind") is not None and N.leaf(name) not in _as_list(rule["kind"]):
        return False
    return True


def tensor_groups(net: Network) -> "dict[str, list[str]]":
    """Canonical parameter name -> every name that reaches the same tensor (canonical first)."""
    groups: dict[str, list[str]] = {}
    for alias, canonical in net.param_aliases().items():
        groups.setdefault(canonical, []).append(alias)
    for alias, canonical in getattr(net, "transposed_aliases", {}).items():
        groups.setdefault(canonical, []).append(alias)
    return groups


def layer_type_of(net: Network, param_name: str) -> str:
    info = net.infos.get(N.parent(param_name))
    if info is None:
        return ""
    if info.reuse_of:
        info = net.infos[info.reuse_of]
    return canonical_type(info.type)


def apply_init(net: Network, cfg: dict | None, seed: int, path: str = "init",
               tracking_uri: str | None = None) -> InitReport:
    """Initialise every parameter of ``net`` once, following ``cfg['rules']``; then load the warm
    start, if any; then apply edits."""
    from runner.init.edits import apply_edits

    cfg = cfg or {}
    problems = check_init(cfg, path)
    if problems:
        raise ConfigError(problems)
    rules = cfg.get("rules") or []
    groups = tensor_groups(net)
    chosen: dict[str, int | None] = {}
    hits = [0] * len(rules)
    p = Problems()
    for canonical, names in groups.items():
        per_name: dict[str, int | None] = {}
        for name in names:
            last = None
            for i, rule in enumerate(rules):
                if _selects(rule, name, layer_type_of(net, name)):
                    last = i
            per_name[name] = last
        picks = set(per_name.values())
        for i in picks - {None}:
            hits[i] += 1
        if len(picks) > 1:
            detail = ", ".join(f"{n} <- {_rule_label(rules[i], i) if i is not None else 'default'}"
                               for n, i in per_name.items())
            p.add(path + ".rules", f"rules disagree about the tie group {canonical!r} ({detail}); "
                  "select every name of a tie group with the same rule")
        chosen[canonical] = per_name[canonical]
    allow_all = bool(cfg.get("allow_unmatched"))
    for i, rule in enumerate(rules):
        if hits[i] == 0 and not (allow_all or rule.get("allow_unmatched")):
            sel = {k: rule[k] for k in ("params", "layer", "kind") if rule.get(k) is not None}
            suggestion = ""
            if isinstance(rule.get("params"), str) and not N.is_glob(rule["params"]):
                suggestion = did_you_mean(rule["params"], [n for ns in groups.values() for n in ns])
            p.add(f"{path}.rules[{i}]", f"selects no parameter ({sel or 'everything'}){suggestion}; "
                  "set allow_unmatched: true to allow it")
    p.raise_if_any("invalid init rules")

    params = net.params()
    entries: list[InitEntry] = []
    with torch.no_grad():
        for canonical, names in groups.items():
            t = params[canonical]
            g = generator_for(seed, canonical)
            i = chosen[canonical]
            rule = rules[i] if i is not None else None
            args = dict((rule or {}).get("args") or {})
            if rule is None or rule["init"] == I.DEFAULT:
                module = net.module(N.parent(canonical))
                desc = I.layer_default(module, N.leaf(canonical), t, g)
                label = "default" if rule is None else _rule_label(rule, i)
            else:
                try:
                    I.call(I.resolve(rule["init"]), args, t, g)
                except (ValueError, TypeError, RuntimeError) as e:
                    p.add(f"{path}.rules[{i}]", f"{rule['init']} cannot initialise {canonical} "
                          f"(shape {list(t.shape)}): {first_line(e)}")
                    continue
                desc, label = str(rule["init"]), _rule_label(rule, i)
            entries.append(InitEntry(canonical, names[1:], list(t.shape), label, desc, args))
    p.raise_if_any("invalid init rules")
    report = InitReport(seed, entries)
    if cfg.get("warm_start"):
        from runner.init.warm import apply_warm_start

        apply_warm_start(net, cfg["warm_start"], report, f"{path}.warm_start", tracking_uri)
    apply_edits(net, cfg.get("edits") or [], report, f"{path}.edits")
    report.refresh_stats(net)
    return report
