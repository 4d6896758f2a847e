"""Build a torch model from a config tree, inferring every shape from a sample batch.

A model config is ``{name, layers: [node, ...]}``; the root is a sequential block. Each node is a
mapping with a ``type`` (see ``runner.model.layers``) and an optional ``name``. A node without a
name is called ``<type>-<position>``; copies made by ``repeat`` are called ``block-0 ...`` (or
``name_format`` / ``names``). Dotted module and parameter names follow the tree, so they depend on
the config alone, never on construction order.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from runner import names as N
from runner.errors import ConfigError, Problem, Problems, UserError, did_you_mean, first_line, one_of
from runner.model.ties import apply_ties, check_ties
from runner.model.layers import (
    CONTAINER_FIELDS,
    LAYER_TYPES,
    ShapeError,
    all_type_names,
    canonical_type,
    fields_of,
    with_defaults,
)

MODEL_KEYS = {"name", "description", "layers", "ties"}


# --- validation ------------------------------------------------------------------------------

def check_model(cfg: Any, path: str = "model") -> list[Problem]:
    """Every problem in a model config, each with its dotted config path."""
    p = Problems()
    if not p.mapping(cfg, path, MODEL_KEYS, " with 'layers'"):
        return p.items
    _check_children(cfg.get("layers"), f"{path}.layers", p)
    p.extend(check_ties(cfg.get("ties"), f"{path}.ties"))
    return p.items


def _check_children(layers: Any, path: str, p: Problems) -> None:
    if not isinstance(layers, list) or not layers:
        p.add(path, "must be a non-empty list of layers")
        return
    seen: dict[str, int] = {}
    for i, node in enumerate(layers):
        npath = f"{path}[{i}]"
        _check_node(node, npath, p)
        if not isinstance(node, dict) or not isinstance(node.get("type"), str):
            continue
        name = child_name(node, i)
        if name in seen:
            p.add(f"{npath}.name", f"duplicate name {name!r} (also used by {path}[{seen[name]}])")
        if canonical_type(node["type"]) == "reuse":
            target = node.get("layer")
            if isinstance(target, str) and target not in seen:
                p.add(f"{npath}.layer", f"no earlier sibling named {target!r}{did_you_mean(target, seen)}")
            elif isinstance(target, str):
                tnode = layers[seen[target]]
                if isinstance(tnode, dict) and canonical_type(str(tnode.get("type"))) not in LAYER_TYPES:
                    p.add(f"{npath}.layer", f"{target!r} is a {tnode.get('type')}; only single layers can be reused")
        seen[name] = i


def _check_node(node: Any, path: str, p: Problems) -> None:
    if not isinstance(node, dict):
        p.add(path, f"must be a mapping with a 'type', got {node!r}")
        return
    t = node.get("type")
    if t is None:
        p.add(f"{path}.type", "missing required value")
        return
    if not isinstance(t, str) or canonical_type(t) not in {*LAYER_TYPES, *CONTAINER_FIELDS}:
        types = all_type_names()
        p.add(f"{path}.type", f"unknown layer type {t!r}{did_you_mean(str(t), types)}; known: {one_of(types)}")
        return
    fields = fields_of(t)
    p.unknown_keys(node, fields, path, f" for {t!r}")
    for key, value in node.items():
        if key not in fields:
            continue
        if value is None and not fields[key].required:
            continue
        if value is None:
            p.add(f"{path}.{key}", "missing required value")
            continue
        msg = fields[key].check(value)
        if msg:
            p.add(f"{path}.{key}", msg)
    for key, spec in fields.items():
        if spec.required and key not in node:
            p.add(f"{path}.{key}", f"missing required value ({spec.help or key})")
    kind = canonical_type(t)
    if kind == "sequential":
        _check_children(node.get("layers"), f"{path}.layers", p)
    elif kind == "repeat":
        if "block" in node:
            _check_node(node["block"], f"{path}.block", p)
        fmt = node.get("name_format")
        if isinstance(fmt, str) and "{i}" not in fmt:
            p.add(f"{path}.name_format", f"must contain '{{i}}', got {fmt!r}")
        names = node.get("names")
        times = node.get("times")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) and n and "." not in n for n in names):
                p.add(f"{path}.names", "must be a list of names without dots")
            elif len(set(names)) != len(names):
                p.add(f"{path}.names", "names must be unique")
            elif isinstance(times, int) and len(names) != times:
                p.add(f"{path}.names", f"has {len(names)} names but times is {times}")


def child_name(node: dict, index: int) -> str:
    if node.get("name"):
        return str(node["name"])
    return f"{canonical_type(node['type'])}-{index}"


def repeat_names(node: dict) -> list[str]:
    if node.get("names"):
        return list(node["names"])
    fmt = node.get("name_format") or "block-{i}"
    return [fmt.format(i=i) for i in range(node["times"])]


# --- the built model --------------------------------------------------------------------------

@dataclass
class ModuleInfo:
    """What the builder knows about one module of the tree."""

    name: str                 # dotted module name, "" for the root
    type: str                 # node type from the config
    config_path: str          # where it was declared, e.g. "model.layers[0].block"
    out_shape: tuple[int, ...]
    is_block: bool
    reuse_of: str | None = None  # for a reused layer: the dotted name of its first use


class Network(nn.Sequential):
    """The root of a built model: a sequential block with named access to everything inside.

    Index paths work as with lists (``net[0][1][1].bias``); names work through :meth:`param`,
    :meth:`module` and :meth:`params`.
    """

    def __init__(self, children: "OrderedDict[str, nn.Module]", infos: list[ModuleInfo], config: dict):
        super().__init__(children)
        self.infos: dict[str, ModuleInfo] = {i.name: i for i in infos}
        self.config = config
        # alias -> canonical name, for parameters that are the transpose of a tied tensor
        self.transposed_aliases: dict[str, str] = {}

    # Parameters ------------------------------------------------------------------------------
    def _named(self):
        """(name, parameter) for every use, without torch's internal parametrization names."""
        return [(n, p) for n, p in self.named_parameters(remove_duplicate=False) if ".parametrizations." not in n]

    def params(self) -> "OrderedDict[str, nn.Parameter]":
        """Every distinct parameter by its canonical name (its first use in model order)."""
        out: OrderedDict[str, nn.Parameter] = OrderedDict()
        seen: set[int] = set()
        for n, p in self._named():
            if id(p) not in seen:
                seen.add(id(p))
                out[n] = p
        return out

    def param_aliases(self) -> "OrderedDict[str, str]":
        """Every name a parameter can be reached by (shared uses included) -> canonical name."""
        canonical = {id(p): n for n, p in reversed(self.params().items())}
        return OrderedDict((n, canonical[id(p)]) for n, p in self._named())

    def param(self, name: str) -> torch.Tensor:
        """The parameter called ``name`` (canonical or alias name).

        For the transposed side of a transposed tie this is the computed view (``W.T``) of the
        stored parameter, which :meth:`params` lists under its canonical name.
        """
        if name in self.transposed_aliases:
            return getattr(self.module(N.parent(name)), N.leaf(name))
        table = dict(self._named())
        if name not in table:
            choices = [*table, *self.transposed_aliases]
            raise UserError(f"no parameter named {name!r}{did_you_mean(name, choices)}")
        return table[name]

    def module(self, name: str) -> nn.Module:
        """The module called ``name`` ('' is the root)."""
        if name == "":
            return self
        table = dict(self.named_modules(remove_duplicate=False))
        if name not in table:
            raise UserError(f"no module named {name!r}{did_you_mean(name, table)}")
        return table[name]


def build_model(cfg: dict, sample: torch.Tensor, path: str = "model") -> Network:
    """Validate ``cfg`` and build it, inferring shapes by running ``sample`` through each layer."""
    problems = check_model(cfg, path)
    if problems:
        raise ConfigError(problems)
    infos: list[ModuleInfo] = []
    with torch.no_grad():
        children, out = _build_children(cfg["layers"], f"{path}.layers", "", sample, infos)
    root = ModuleInfo("", "model", path, tuple(out.shape), True)
    net = Network(children, [root, *infos], cfg)
    apply_ties(net, cfg.get("ties"), f"{path}.ties")
    return net


def _build_children(layers: list, path: str, prefix: str, x: torch.Tensor, infos: list[ModuleInfo]):
    children: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, node in enumerate(layers):
        name = child_name(node, i)
        full = N.join(prefix, name)
        npath = f"{path}[{i}]"
        if canonical_type(node["type"]) == "reuse":
            target = children[node["layer"]]
            x = _run(target, x, npath)
            infos.append(ModuleInfo(full, node["type"], npath, tuple(x.shape), False,
                                    reuse_of=N.join(prefix, node["layer"])))
            children[name] = target
            continue
        module, x = _build_node(node, npath, full, x, infos)
        children[name] = module
    return children, x


def _build_node(node: dict, path: str, full: str, x: torch.Tensor, infos: list[ModuleInfo]):
    kind = canonical_type(node["type"])
    if kind in LAYER_TYPES:
        fields = with_defaults(node)
        try:
            module = LAYER_TYPES[kind].build(fields, tuple(x.shape))
        except ShapeError as e:
            raise ConfigError([Problem(f"{path}.{e.key}", e.message)]) from None
        y = _run(module, x, path)
        infos.append(ModuleInfo(full, node["type"], path, tuple(y.shape), False))
        return module, y
    info = ModuleInfo(full, node["type"], path, (), True)
    infos.append(info)
    if kind == "sequential":
        children, y = _build_children(node["layers"], f"{path}.layers", full, x, infos)
    else:  # repeat
        children = OrderedDict()
        y = x
        for name in repeat_names(node):
            children[name], y = _build_node(node["block"], f"{path}.block", N.join(full, name), y, infos)
    info.out_shape = tuple(y.shape)
    return nn.Sequential(children), y


def _run(module: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    try:
        return module(x)
    except RuntimeError as e:
        first = first_line(e)
        raise ConfigError([Problem(path, f"does not fit an input of shape {list(x.shape)}: {first}")]) from None
