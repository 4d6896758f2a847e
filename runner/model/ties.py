"""Tie groups: parameters (or whole layers' parameters) shared across the network.

Declared in the model config under ``ties``, as a list of groups:

- ``{layers: [enc, "dec*"]}`` shares every parameter of the named layers (same type and shapes);
- ``{params: [a.weight, b.weight]}`` shares one tensor;
- ``{params: [encoder.weight, decoder.weight], transpose: true}``: the second is the transpose of
  the first (tied autoencoders, tied input/output embeddings). Implemented with
  ``torch.nn.utils.parametrize``, so gradients from both uses reach the one stored tensor.

Names are dotted names or globs (``runner.names``). A group's canonical name is its first use in
model order (for a transposed tie: the first name listed, which holds the stored tensor); the
others are aliases. A group keeps one storage: the optimizer sees it once, the summary
counts it once, init runs once for it, and it survives ``.to()``, copying and ``load_state_dict``.
Reusing a layer inside a block (``type: reuse``) is the other way to share, and shows up in the
same tie map.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from runner import names as N
from runner.errors import ConfigError, Problem, Problems, did_you_mean

GROUP_KEYS = {"layers", "params", "transpose", "name"}


class Transpose(nn.Module):
    """Parametrization: the layer's tensor is the transpose of the stored (shared) one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.t()


def check_ties(ties: Any, path: str = "model.ties") -> list[Problem]:
    """Checks that need no built model: the shape of each group declaration."""
    p = Problems()
    if ties is None:
        return []
    if not isinstance(ties, list):
        p.add(path, "must be a list of tie groups")
        return p.items
    for i, g in enumerate(ties):
        gp = f"{path}[{i}]"
        if not p.mapping(g, gp, GROUP_KEYS, " like {params: [a.weight, b.weight]}"):
            continue
        has = [k for k in ("layers", "params") if k in g]
        if len(has) != 1:
            p.add(gp, "needs exactly one of 'layers' (share whole layers) or 'params' (share tensors)")
            continue
        members = g[has[0]]
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            p.add(f"{gp}.{has[0]}", "must be a list of dotted names or globs")
        if "transpose" in g and not isinstance(g["transpose"], bool):
            p.add(f"{gp}.transpose", f"must be true or false, got {g['transpose']!r}")
        if g.get("transpose") and has[0] != "params":
            p.add(f"{gp}.transpose", "applies to parameter ties only")
    return p.items


def _expand(patterns: list[str], names: list[str], what: str, gp: str, p: Problems,
            buffers: list[str] = ()) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        hits = N.select(names, pat)
        if not hits and N.select(buffers, pat):
            p.add(gp, f"{pat!r} names a buffer ({', '.join(N.select(buffers, pat)[:3])}); buffers are state, "
                      "never tied")
        elif not hits:
            p.add(gp, f"no {what} named {pat!r}{did_you_mean(pat, names)}")
        out.extend(h for h in hits if h not in out)
    return out


def resolve_groups(net, ties: list[dict], path: str = "model.ties") -> list[tuple[str, list[str], bool]]:
    """Expand every group to parameter names: [(canonical, [aliases], transposed)], or raise all problems."""
    p = Problems()
    param_names = list(net.params())
    buffer_names = list(net.buffers_by_name())
    layer_names = [n for n, info in net.infos.items() if n and not info.reuse_of]
    resolved: list[tuple[str, list[str], bool]] = []
    owner: dict[str, str] = {}
    for i, g in enumerate(ties):
        gp = f"{path}[{i}]"
        transposed = bool(g.get("transpose"))
        if "layers" in g:
            layers = _expand(g["layers"], layer_names, "layer", f"{gp}.layers", p)
            if len(g["layers"]) != len(set(g["layers"])) or (layers and len(layers) < 2):
                p.add(f"{gp}.layers", f"ties a layer to itself ({', '.join(layers)}); a group needs two or more layers")
                continue
            if len(layers) < 2:
                continue
            first = net.module(layers[0])
            attrs = [n for n, _ in first.named_parameters() if ".parametrizations." not in n]
            before = len(p.items)
            for other in layers[1:]:
                m = net.module(other)
                if type(m) is not type(first):
                    p.add(f"{gp}.layers", f"{other} is a {type(m).__name__} but {layers[0]} is a {type(first).__name__}")
                elif [n for n, _ in m.named_parameters() if ".parametrizations." not in n] != attrs:
                    p.add(f"{gp}.layers", f"{other} and {layers[0]} do not hold the same parameters")
            if len(p.items) > before:  # layers that differ have no parameters to pair up
                continue
            pairs = [[N.join(layer, a) for layer in layers] for a in attrs]
            if not attrs:
                p.add(f"{gp}.layers", f"{layers[0]} has no parameters to share")
        else:
            members = _expand(g["params"], param_names, "parameter", f"{gp}.params", p, buffer_names)
            if len(g["params"]) != len(set(g["params"])) or (members and len(members) < 2):
                p.add(f"{gp}.params", f"ties a parameter to itself ({', '.join(members)}); a group needs two or more")
                continue
            if transposed and len(members) != 2:
                p.add(f"{gp}.params", f"a transposed tie takes exactly two parameters, got {len(members)}")
                continue
            pairs = [members] if len(members) >= 2 else []
        for names in pairs:
            ok = True
            ref = net.param(names[0])
            for n in names:
                if n in owner:
                    p.add(gp, f"{n} is already in tie group {owner[n]}; a parameter can be in one group only")
                    ok = False
            for n in names[1:]:
                t = net.param(n)
                want = tuple(ref.shape[::-1]) if transposed else tuple(ref.shape)
                if tuple(t.shape) != want:
                    rel = "the transpose of " if transposed else ""
                    p.add(gp, f"shape mismatch: {n} is {list(t.shape)} but {rel}{names[0]} is {list(want)}")
                    ok = False
                if t.dtype != ref.dtype:
                    p.add(gp, f"dtype mismatch: {n} is {t.dtype} but {names[0]} is {ref.dtype}")
                    ok = False
            for n in names:
                owner.setdefault(n, f"{path}[{i}]")
            if ok:
                resolved.append((names[0], names[1:], transposed))
    p.raise_if_any("invalid tie groups")
    return resolved


def apply_ties(net, ties: list[dict] | None, path: str = "model.ties") -> None:
    """Make each group share one stored tensor (validating everything first)."""
    if not ties:
        return
    problems = check_ties(ties, path)
    if problems:
        raise ConfigError(problems)
    for canonical, aliases, transposed in resolve_groups(net, ties, path):
        shared = net.param(canonical)
        for alias in aliases:
            module = net.module(N.parent(alias))
            attr = N.leaf(alias)
            if transposed:
                parametrize.register_parametrization(module, attr, Transpose(), unsafe=True)
                module.parametrizations[attr].original = shared
                net.transposed_aliases[alias] = canonical
            else:
                setattr(module, attr, shared)


def tie_map(net) -> dict[str, dict[str, list[str]]]:
    """Canonical name -> {"aliases": [...], "transposed": [...]} for every shared tensor."""
    out: dict[str, dict[str, list[str]]] = {}
    for alias, canonical in net.param_aliases().items():
        if alias != canonical:
            out.setdefault(canonical, {"aliases": [], "transposed": []})["aliases"].append(alias)
    for alias, canonical in net.transposed_aliases.items():
        out.setdefault(canonical, {"aliases": [], "transposed": []})["transposed"].append(alias)
    return out
