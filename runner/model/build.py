"""Build a torch model from a config, inferring every shape from a sample batch.

A model config is either a tree, ``{name, layers: [node, ...]}`` (the root is a sequential
block; node types in ``runner.model.layers``), or a whole model given by ``_target_`` (any
``nn.Module`` class or factory, built with Hydra's ``instantiate``; the other keys are its
arguments). Either may declare ``ties`` and ``vars`` (values for interpolations and init
expressions, e.g. ``n_layer``).

A node without a name is called ``<type>-<position>``; copies made by ``repeat`` are called
``block-0 ...`` (or ``name_format`` / ``names``). Dotted module and parameter names follow the
tree, so they depend on the config alone, never on construction order. Inside a ``module`` node
or a ``_target_`` model, names are the module's own.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runner import names as N
from runner.code import instantiate
from runner.errors import ConfigError, Problem, Problems, did_you_mean, first_line, one_of
from runner.model.layers import (
    NODE_TYPES,
    BuildContext,
    Layer,
    Module,
    Node,
    Repeat,
    Residual,
    Reuse,
    ShapeError,
    all_type_names,
    canonical_type,
    module_type,
)
from runner.model.modules import Residual as ResidualModule, projection
from runner.model.network import ModuleInfo, Network, as_network
from runner.model.ties import apply_ties, check_ties

MODEL_KEYS = ("name", "description", "vars", "layers", "ties", "_target_")


# --- parsing ---------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    """A parsed model config."""

    name: str
    layers: list[Node] = field(default_factory=list)
    target: str | None = None
    args: dict = field(default_factory=dict)
    ties: list | None = None
    vars: dict = field(default_factory=dict)


def parse_model(cfg: Any, path: str = "model") -> tuple[ModelSpec | None, list[Problem]]:
    p = Problems()
    if not isinstance(cfg, dict):
        p.add(path, f"must be a mapping with 'layers' or '_target_', got {cfg!r}")
        return None, p.items
    target = cfg.get("_target_")
    if target is None:
        p.unknown_keys(cfg, MODEL_KEYS, path)
        layers = _parse_children(cfg.get("layers"), f"{path}.layers", p)
    else:
        layers = []
        if not isinstance(target, str) or not target:
            p.add(f"{path}._target_", f"must be a dotted path to an nn.Module class or factory, got {target!r}")
        if "layers" in cfg:
            p.add(f"{path}.layers", "a model is either a tree of layers or a _target_, not both")
    vars_ = cfg.get("vars") or {}
    if not isinstance(vars_, dict) or not all(isinstance(k, str) and k.isidentifier() for k in vars_):
        p.add(f"{path}.vars", "must be a mapping of identifiers to values")
        vars_ = {}
    name = cfg.get("name", "model")
    if not isinstance(name, str) or not name:
        p.add(f"{path}.name", f"must be a non-empty string, got {name!r}")
    p.extend(check_ties(cfg.get("ties"), f"{path}.ties"))
    args = {k: v for k, v in cfg.items() if k not in MODEL_KEYS} if target is not None else {}
    spec = ModelSpec(str(name), layers, target, args, cfg.get("ties"), dict(vars_))
    return (None if p else spec), p.items


def check_model(cfg: Any, path: str = "model") -> list[Problem]:
    """Every problem in a model config that shows without building it, each with its config path."""
    return parse_model(cfg, path)[1]


def _parse_children(layers: Any, path: str, p: Problems) -> list[Node]:
    if not isinstance(layers, list) or not layers:
        p.add(path, "must be a non-empty list of layers")
        return []
    out: list[Node] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(layers):
        npath = f"{path}[{i}]"
        node = _parse_node(raw, npath, p)
        if node is None:
            continue
        name = child_name(node, i)
        if name in seen:
            p.add(f"{npath}.name", f"duplicate name {name!r} (also used by {path}[{seen[name]}])")
        if isinstance(node, Reuse):
            target = node.layer
            if target not in seen:
                p.add(f"{npath}.layer", f"no earlier sibling named {target!r}{did_you_mean(target, seen)}")
            elif isinstance(out[seen[target]], Reuse):
                p.add(f"{npath}.layer", f"{target!r} is itself a reuse; name the layer it reuses")
        seen[name] = len(out)
        out.append(node)
    return out


def _parse_node(raw: Any, path: str, p: Problems) -> Node | None:
    if not isinstance(raw, dict):
        p.add(path, f"must be a mapping with a 'type', got {raw!r}")
        return None
    t = raw.get("type")
    if t is None:
        p.add(f"{path}.type", "missing required value (a layer type, e.g. linear)")
        return None
    if not isinstance(t, str) or canonical_type(t) not in NODE_TYPES:
        types = all_type_names()
        p.add(f"{path}.type", f"unknown layer type {t!r}{did_you_mean(str(t), types)}; known: {one_of(types)}")
        return None
    cls = NODE_TYPES[canonical_type(t)]
    node, problems = cls.parse(raw, path)
    p.extend(problems)
    # children are checked whatever the state of their parent, so every problem shows at once
    if cls.type_name in ("sequential", "residual"):
        children = _parse_children(raw.get("layers"), f"{path}.layers", p)
    elif cls.type_name == "repeat":
        block = _parse_node(raw["block"], f"{path}.block", p) if "block" in raw else None
        children = [block] if block is not None else []
    else:
        children = []
    if node is not None:
        node._children = children
    return node


def child_name(node: Node, index: int) -> str:
    return node.name or f"{canonical_type(node.type)}-{index}"


# --- building ----------------------------------------------------------------------------------

def build_model(cfg: Any, sample: torch.Tensor, ctx: BuildContext | None = None, seed: int = 0,
                path: str = "model") -> Network:
    """Validate ``cfg`` and build it, inferring shapes by running ``sample`` through each layer.

    Modules are built (and shapes inferred) in eval mode, so that no running statistics move;
    the model is returned in training mode. Construction draws from a seeded RNG of its own.
    """
    from runner.init.rules import stream_seed

    spec, problems = parse_model(cfg, path)
    if problems:
        raise ConfigError(problems)
    ctx = ctx or BuildContext()
    declared: dict[str, ModuleInfo] = {}
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "model construction"))
        if spec.target is not None:
            root = _user_module(spec.target, spec.args, path)
            out = _run(root, sample, path)
        else:
            children, out = _build_children(spec.layers, f"{path}.layers", "", sample, declared, ctx)
            root = nn.Sequential(children)
    net = as_network(root, {}, cfg)
    # refused by training (runner.train.loop.fit), noted by task=inspect
    net.output_problem = output_problem(out, sample, ctx, whole_module=spec.target is not None)
    net.infos = describe_modules(net, sample, declared, path)
    net.train()
    apply_ties(net, spec.ties, f"{path}.ties")
    return net


def output_problem(out: Any, sample: torch.Tensor, ctx: BuildContext, whole_module: bool = False) -> str | None:
    """Why the model's output cannot be trained on this data, or None. A classifier needs (N,
    classes) logits and a language model (N, positions, vocabulary): with another shape or fewer
    logits the loss fails at the first step. A regression model needs exactly (N, target width):
    otherwise MSE broadcasts one against the other and trains on a silently wrong loss.
    ``whole_module``: the model is one user module (no last layer to point at)."""
    if ctx.out_features is None or not isinstance(out, torch.Tensor):
        return None
    want = ctx.out_features

    def fix(per: str) -> str:
        return f"make the module's output {want} value(s) per {per}" if whole_module else \
            f"set the last layer's out to {want} (or auto)"

    per_sample = "one value per sample with no feature axis" if out.dim() == 1 else \
        f"shape {list(out.shape[1:])} per sample"
    if ctx.task in ("classification", "lm"):
        per = "sample" if ctx.task == "classification" else "position"
        what = f"{want} classes" if ctx.task == "classification" else f"a vocabulary of {want} tokens"
        # one row of logits per sample (classes), or per position (tokens: (N, T, V) or flattened)
        rows = sample.shape[0] if ctx.task == "classification" else sample.numel()
        if out.dim() < 2 or out.shape[:-1].numel() != rows or (ctx.task == "classification" and out.dim() != 2):
            need = f"a classifier needs (N, {want})" if ctx.task == "classification" else \
                f"a language model needs (N, positions, {want})"
            return f"outputs {per_sample}, but {need} logits"
        if out.shape[-1] < want:
            return f"outputs {out.shape[-1]} value(s) per {per}, but the data has {what}; {fix(per)}"
        return None
    if ctx.task != "regression" or (out.dim() == 2 and out.shape[1] == want):
        return None
    if out.dim() == 2:
        text = f"outputs {out.shape[1]} value(s) per sample, but the data's targets have {want}; " \
               f"{fix('sample')}"
        if out.shape[1] == sample[0].numel():
            text += ", or train it to reproduce its input: data.autoencode=true"
        return text
    return f"outputs {per_sample}, but the data's targets are {want} value(s) per sample (the loss would " \
           f"broadcast one against the other); end the model in {want} value(s) per sample, e.g. a flatten and " \
           f"a linear layer with out: auto"


def check_trainable(net: nn.Module, path: str = "model") -> None:
    """Refuse to train a model whose output does not fit the data (``output_problem``; a module
    the runner did not build has none)."""
    problem = getattr(net, "output_problem", None)
    if problem:
        raise ConfigError([Problem(path, problem)])


def _user_module(target: str, args: dict, path: str) -> nn.Module:
    m = instantiate(target, args, path)
    if not isinstance(m, nn.Module):
        raise ConfigError([Problem(f"{path}._target_", f"{target} built a {type(m).__name__}, not a torch nn.Module")])
    return m.eval()


def _build_children(nodes: list[Node], path: str, prefix: str, x: torch.Tensor,
                    declared: dict[str, ModuleInfo], ctx: BuildContext):
    children: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, node in enumerate(nodes):
        name = child_name(node, i)
        full = N.join(prefix, name)
        npath = f"{path}[{i}]"
        if isinstance(node, Reuse):
            target = children[node.layer]
            x = _run(target, x, npath)
            declared[full] = ModuleInfo(full, node.type, npath, tuple(x.shape), False,
                                        reuse_of=N.join(prefix, node.layer), declared=True)
            children[name] = target
            continue
        module, x = _build_node(node, npath, full, x, declared, ctx)
        children[name] = module
    return children, x


def _build_node(node: Node, path: str, full: str, x: torch.Tensor, declared: dict[str, ModuleInfo],
                ctx: BuildContext, copy: tuple[int, int] | None = None):
    info = ModuleInfo(full, node.type, path, (), node.container, declared=True,
                      copy_index=copy[0] if copy else None, copies=copy[1] if copy else None)
    declared[full] = info
    if isinstance(node, Layer):
        try:
            module = node.build(x, ctx)
        except ShapeError as e:
            raise ConfigError([Problem(f"{path}.{e.key}" if e.key else path, e.message)]) from None
        module.eval()
        y = _run(module, x, path)
    elif isinstance(node, Module):
        module = _user_module(node.target, node.arguments(), path)
        y = _run(module, x, path)
    elif isinstance(node, Repeat):
        children = OrderedDict()
        y = x
        names = node.copy_names()
        for i, name in enumerate(names):
            children[name], y = _build_node(node.children[0], f"{path}.block", N.join(full, name), y, declared, ctx,
                                            (i, len(names)))
        module = nn.Sequential(children)
    elif isinstance(node, Residual):
        children, y = _build_children(node.children, f"{path}.layers", full, x, declared, ctx)
        if "proj" in children:
            raise ConfigError([Problem(f"{path}.layers", "'proj' is the name of a residual's projection; "
                                                         "name that layer otherwise")])
        proj = None
        if tuple(y.shape) != tuple(x.shape):
            if not node.projection:
                raise ConfigError([Problem(f"{path}.projection", f"the body maps {list(x.shape)} to "
                                           f"{list(y.shape)}; set projection: true for a learned projection of "
                                           "the input, or keep the shape")])
            proj = projection(tuple(x.shape), tuple(y.shape))
            if isinstance(proj, str):
                raise ConfigError([Problem(f"{path}.projection", proj)])
            declared[N.join(full, "proj")] = ModuleInfo(N.join(full, "proj"), module_type(proj), path, tuple(y.shape),
                                                        False)
        module = ResidualModule(children, proj, node.activation).eval()
        y = _run(module, x, path)
    else:  # sequential
        children, y = _build_children(node.children, f"{path}.layers", full, x, declared, ctx)
        module = nn.Sequential(children)
    info.out_shape = tuple(y.shape)
    return module, y


def _run(module: nn.Module, x: torch.Tensor, path: str) -> torch.Tensor:
    import os

    try:
        y = module(x)
    except Exception as e:  # user modules may raise anything
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise ConfigError([Problem(path, f"does not fit an input of shape {list(x.shape)}: "
                                         f"{type(e).__name__ + ': ' if not isinstance(e, RuntimeError) else ''}"
                                         f"{first_line(e)}")]) from None
    if not isinstance(y, torch.Tensor):
        raise ConfigError([Problem(path, f"returns a {type(y).__name__}, not a tensor; a layer of a model "
                                         "must map a tensor to a tensor")])
    return y


def describe_modules(net: nn.Module, sample: torch.Tensor, declared: dict[str, ModuleInfo],
                     path: str) -> dict[str, ModuleInfo]:
    """A :class:`ModuleInfo` for every module (every use, in model order), with output shapes from
    one eval-mode pass of ``sample``."""
    calls: dict[int, list[tuple[int, ...]]] = {}

    def hook(module, inputs, output):
        out = output if isinstance(output, torch.Tensor) else next(
            (o for o in (output if isinstance(output, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None)
        calls.setdefault(id(module), []).append(tuple(out.shape) if out is not None else ())

    modules = list(net.named_modules(remove_duplicate=False))
    handles = [m.register_forward_hook(hook) for m in {id(m): m for _, m in modules}.values()]
    training = net.training
    try:
        net.eval()
        with torch.no_grad():
            _run(net, sample, path)
    finally:
        for h in handles:
            h.remove()
        net.train(training)
    table = dict(modules)
    infos: dict[str, ModuleInfo] = {}
    first: dict[int, str] = {}
    uses: dict[int, int] = {}
    owner_path = {"": path}
    for name, m in modules:
        k = uses.get(id(m), 0)
        uses[id(m)] = k + 1
        shapes = calls.get(id(m), [])
        shape = shapes[k] if k < len(shapes) else (shapes[-1] if shapes else ())
        info = declared.get(name)
        parent = N.parent(name) if name else None
        if info is None:
            cpath = owner_path.get(parent, path) if parent is not None else path
            info = ModuleInfo(name, module_type(m), cpath, shape, False)
            pm = table.get(parent) if parent is not None else None
            if N.leaf(name).isdigit() and isinstance(pm, (nn.ModuleList, nn.Sequential)):
                info.copy_index, info.copies = int(N.leaf(name)), len(pm)
        else:
            info.out_shape = info.out_shape or shape
        owner_path[name] = info.config_path
        info.is_block = any(True for _ in m.children())
        info.cls = type(m).__name__
        if id(m) in first and info.reuse_of is None:
            info.reuse_of = first[id(m)]
        first.setdefault(id(m), name)
        infos[name] = info
    if "" in infos:
        infos[""].type = "model"
    return infos

