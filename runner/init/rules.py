"""Init rules: which initializer sets which tensor, applied once per tensor, with a report.

``init.rules`` is an ordered list. A rule selects tensors by any combination of

- ``params``: a glob (or list of globs) over dotted names (see ``runner.names``),
- ``layer``: the type of the module holding the tensor, or of any module around it: a node type
  (``linear``, ``conv2d``, ``embedding``, ...; a linear layer inside a transformer block is a
  ``linear`` too, and ``layer: attention`` reaches the linear layers inside attention) or a torch
  class name (``Conv2d``, ``MyBlock``),
- ``kind``: the tensor's own name within its module (``weight``, ``bias``, ``running_var``), or
  ``param`` / ``buffer`` for all of either,

and names an ``init`` (a built-in or a dotted path to user code) with ``args``. An argument
written ``"=<expression>"`` is computed per tensor (``runner.expr``): ``std: "=0.02 / sqrt(2 *
n_layer)"`` with the model's ``vars``, the copy index ``i`` and count ``n`` of the ``repeat``
holding the tensor, and its ``fan_in``, ``fan_out`` and ``numel``.

Rules select parameters; buffers (batch-norm running statistics) only when ``kind`` says
``buffer`` or names them. **Later rules override earlier ones**: each tensor is initialised
exactly once, by the last rule that selects it; parameters no rule selects get their layer's
torch default and are reported as ``default``. A rule that selects nothing is an error unless
``allow_unmatched`` is set (on the rule or for the whole group). Every tensor draws from its own
generator, seeded from the run seed and its canonical name, so values do not depend on
construction order.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from pydantic import Field

from runner import expr
from runner import names as N
from runner.code import LocateError
from runner.errors import Problems, did_you_mean, first_line, one_of
from runner.init import initializers as I
from runner.init.edits import Edit
from runner.init.warm import WarmStart
from runner.model.layers import all_type_names, canonical_type
from runner.model.network import Network
from runner.schema import Globs, Schema, Text

ROLES = ("param", "buffer")


def stream_seed(seed: int, name: str) -> int:
    """The seed of a tensor's own random stream: a hash of the run seed and its name."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator_for(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, name))


def _as_list(v: Any) -> list:
    return [v] if isinstance(v, str) else list(v or [])


# --- schema ------------------------------------------------------------------------------------

class Rule(Schema):
    """One init rule: a selection and the initializer for it."""

    name: Optional[Text] = Field(None, description="a label for the init report (default rules[<i>])")
    params: Optional[Globs] = Field(None, description="globs over dotted tensor names")
    layer: Optional[Globs] = Field(None, description="owning module's type (linear, conv2d, ...) or class name")
    kind: Optional[Globs] = Field(None, description="tensor name in its module (weight, bias), or param / buffer")
    init: Text = Field(description=f"one of {one_of(I.BUILTINS)}, {I.DEFAULT}, or a dotted path")
    args: dict[str, Any] = Field(default_factory=dict, description="initializer arguments; '=expr' per tensor")
    allow_unmatched: bool = Field(False, description="a rule that selects nothing is not an error")

    def problems(self):
        if self.init != I.DEFAULT:
            try:
                fn = I.resolve(self.init)
            except LookupError:
                hint = did_you_mean(self.init, [*I.BUILTINS, I.DEFAULT])
                yield "init", (f"unknown initializer {self.init!r}{hint}; built-ins: {one_of(I.BUILTINS)}, "
                               f"{I.DEFAULT}; or a dotted path to a function or class")
            except LocateError as e:
                yield "init", f"unknown initializer {self.init!r}: {e}"
            except Exception as e:  # user code that is not callable
                yield "init", f"cannot use {self.init!r}: {first_line(e)}"
            else:
                for msg in I.arg_problems(self.init, fn, self.args):
                    yield "args", msg
        for key, value in self.args.items():
            if expr.is_expression(value):
                try:
                    expr.parse(value[1:])
                except expr.ExprError as e:
                    yield f"args.{key}", str(e)
        types = all_type_names()
        for t in _as_list(self.layer):
            if t[:1].islower() and t not in types:  # lowercase: a node type; capitalised: a class name
                yield "layer", f"unknown layer type {t!r}{did_you_mean(t, types)}; or a torch class name such as Conv2d"

    def label(self, i: int) -> str:
        return self.name or f"rules[{i}]"


class InitConfig(Schema):
    """The init group: rules, then a warm start, then edits."""

    rules: Optional[list[Rule]] = Field(default_factory=list, description="ordered rules; the last that selects a tensor wins")
    edits: Optional[list[Edit]] = Field(default_factory=list, description="direct edits, applied last")
    allow_unmatched: bool = Field(False, description="rules that select nothing are not errors")
    warm_start: Optional[WarmStart] = Field(None, description="load tensors from earlier weights after the rules")


def check_init(cfg: Any, path: str = "init") -> list:
    return InitConfig.parse(cfg if cfg is not None else {}, path)[1]


# --- the report --------------------------------------------------------------------------------

@dataclass
class InitEntry:
    """How one tensor (one stored tensor; aliases listed) got its initial value."""

    name: str
    aliases: list[str]
    shape: list[int]
    rule: str            # "rules[2]" / the rule's name, or "default"
    init: str            # initializer name or description
    args: dict = field(default_factory=dict)
    source: str = "init"  # "init", or where warm-started values came from
    edits: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0
    role: str = "param"  # "param" or "buffer"


@dataclass
class InitReport:
    seed: int
    entries: list[InitEntry]
    warm_start: dict | None = None  # source, loaded (tensor -> source name), skipped

    def by_name(self) -> dict[str, InitEntry]:
        return {e.name: e for e in self.entries}

    def to_dict(self) -> dict:
        out = {"seed": self.seed, "parameters": [asdict(e) for e in self.entries]}
        if self.warm_start is not None:
            out["warm_start"] = self.warm_start
        return out

    def refresh_stats(self, net: Network) -> None:
        tensors = net.tensors()
        for e in self.entries:
            t = tensors[e.name].detach().float()
            if t.numel() == 0:
                continue
            e.mean, e.min, e.max = t.mean().item(), t.min().item(), t.max().item()
            e.std = t.std().item() if t.numel() > 1 else 0.0


# --- selection -------------------------------------------------------------------------------------

def tensor_groups(net: Network) -> "dict[str, tuple[str, list[str]]]":
    """Canonical name -> (role, every name that reaches the same tensor, canonical first)."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for alias, canonical in net.param_aliases().items():
        groups.setdefault(canonical, ("param", []))[1].append(alias)
    for alias, canonical in net.transposed_aliases.items():
        groups.setdefault(canonical, ("param", []))[1].append(alias)
    for alias, canonical in net.buffer_aliases().items():
        groups.setdefault(canonical, ("buffer", []))[1].append(alias)
    return groups


def layer_types_of(net: Network, name: str) -> set[str]:
    """The type names a rule's ``layer`` may use for tensor ``name``: those of the module holding
    it and of every module around it (``layer: attention`` reaches the linear layers inside)."""
    out: set[str] = set()
    module = N.parent(name)
    while module:
        info = net.infos.get(module)
        if info is not None:
            if info.reuse_of:
                info = net.infos[info.reuse_of]
            out |= {canonical_type(info.type), info.cls}
        module = N.parent(module)
    return out - {""}


def _selects(rule: Rule, name: str, role: str, types: set[str]) -> bool:
    kinds = _as_list(rule.kind)
    leaf = N.leaf(name)
    if role == "buffer" and not ("buffer" in kinds or leaf in kinds):
        return False
    if role == "param" and kinds and not ("param" in kinds or leaf in kinds):
        return False
    if rule.params is not None and not any(N.matches(name, g) for g in _as_list(rule.params)):
        return False
    if rule.layer is not None and not types & set(_as_list(rule.layer)):
        return False
    return True


def variables(net: Network, name: str, t: torch.Tensor) -> dict[str, Any]:
    """Names an ``=expression`` argument may read for tensor ``name``."""
    out: dict[str, Any] = {k: v for k, v in (net.config.get("vars") or {}).items()} if isinstance(net.config, dict) else {}
    module = N.parent(name)
    while True:
        info = net.infos.get(module)
        if info is not None and info.copy_index is not None:
            out.update(i=info.copy_index, n=info.copies)
            break
        if not module:
            break
        module = N.parent(module)
    if t.dim() >= 2:
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(t)
    else:
        fan_in = fan_out = t.numel()
    out.update(fan_in=fan_in, fan_out=fan_out, numel=t.numel())
    return out


# --- application -------------------------------------------------------------------------------------

def apply_init(net: Network, cfg: Any, seed: int, path: str = "init", tracking_uri: str | None = None) -> InitReport:
    """Initialise every tensor of ``net`` once, following ``cfg.rules``; then load the warm start,
    if any; then apply edits."""
    from runner.init.edits import apply_edits

    cfg = InitConfig.of(cfg, path)
    rules = cfg.rules or []
    groups = tensor_groups(net)
    chosen: dict[str, int | None] = {}
    hits = [0] * len(rules)
    p = Problems()
    for canonical, (role, names) in groups.items():
        per_name: dict[str, int | None] = {}
        for name in names:
            last = None
            types = layer_types_of(net, name)
            for i, rule in enumerate(rules):
                if _selects(rule, name, role, types):
                    last = i
            per_name[name] = last
        picks = set(per_name.values())
        for i in picks - {None}:
            hits[i] += 1
        if len(picks) > 1:
            detail = ", ".join(f"{n} <- {rules[i].label(i) if i is not None else 'default'}" for n, i in per_name.items())
            p.add(path + ".rules", f"rules disagree about the tie group {canonical!r} ({detail}); "
                  "select every name of a tie group with the same rule")
        chosen[canonical] = per_name[canonical]
    for i, rule in enumerate(rules):
        if hits[i] == 0 and not (cfg.allow_unmatched or rule.allow_unmatched):
            sel = {k: getattr(rule, k) for k in ("params", "layer", "kind") if getattr(rule, k) is not None}
            hint = ""
            every = [n for _, ns in groups.values() for n in ns]
            if isinstance(rule.params, str) and not N.is_glob(rule.params):
                hint = did_you_mean(rule.params, every)
            for t in _as_list(rule.layer):
                model_types = sorted({x for n in every for x in layer_types_of(net, n)} - {""})
                if t not in model_types:
                    hint += f" (no {t!r} layer in this model; it has {', '.join(model_types)})"
            buffers = [n for n, (role, _) in groups.items() if role == "buffer"]
            if rule.params is not None and "buffer" not in _as_list(rule.kind) and any(
                    N.matches(b, g) for b in buffers for g in _as_list(rule.params)):
                hint += " (it names buffers: select them with kind: buffer)"
            p.add(f"{path}.rules[{i}]", f"selects no parameter ({sel or 'everything'}){hint}; "
                  "set allow_unmatched: true to allow it")
    p.raise_if_any("invalid init rules")

    tensors = net.tensors()
    entries: list[InitEntry] = []
    with torch.no_grad():
        for canonical, (role, names) in groups.items():
            t = tensors[canonical]
            g = generator_for(seed, canonical)
            i = chosen[canonical]
            rule = rules[i] if i is not None else None
            args = dict(rule.args) if rule is not None else {}
            if rule is None or rule.init == I.DEFAULT:
                module = net.module(N.parent(canonical))
                desc = I.layer_default(module, N.leaf(canonical), t, g)
                label = "default" if rule is None else rule.label(i)
            else:
                where = f"{path}.rules[{i}]"
                try:
                    env = variables(net, canonical, t)
                    args = {k: expr.evaluate(v[1:], env) if expr.is_expression(v) else v for k, v in args.items()}
                except expr.ExprError as e:
                    p.add(f"{where}.args", f"for {canonical}: {e}")
                    continue
                try:
                    I.call(I.resolve(rule.init), args, t, g)
                except Exception as e:  # built-ins refusing a shape, or user code raising anything
                    if os.environ.get("HYDRA_FULL_ERROR") == "1":
                        raise
                    p.add(where, f"{rule.init} cannot initialise {canonical} (shape {list(t.shape)}): "
                                 f"{type(e).__name__ + ': ' if not isinstance(e, (ValueError, RuntimeError)) else ''}"
                                 f"{first_line(e)}")
                    continue
                desc, label = rule.init, rule.label(i)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    p.add(where, f"{rule.init} filled {canonical} with non-finite values (NaN or Inf)")
            entries.append(InitEntry(canonical, names[1:], list(t.shape), label, desc, args, role=role))
    p.raise_if_any("invalid init rules")
    report = InitReport(seed, entries)
    if cfg.warm_start is not None:
        from runner.init.warm import apply_warm_start

        apply_warm_start(net, cfg.warm_start, report, f"{path}.warm_start", tracking_uri)
    apply_edits(net, cfg.edits or [], report, f"{path}.edits")
    report.refresh_stats(net)
    return report
