"""Direct edits of parameter values after initialisation (the chapter's ``w + 1``, ``w[0, 0] = 42``).

An edit is ``{param: NAME, op: set|add|mul, value: NUMBER, index: INDEX}``; ``index`` is
optional and written like Python subscripts, as a string (``"0, 0"``, ``":, 1"``, ``"0:2"``) or a
list (``[0, 0]``). All edits are checked on copies first: if any is wrong, none is applied.
"""
from __future__ import annotations

from typing import Any

import torch

from runner.errors import ConfigError, Problem, Problems, did_you_mean, first_line

OPS = ("set", "add", "mul")
EDIT_KEYS = {"param", "op", "value", "index"}


def check_edits(edits: Any, path: str) -> list[Problem]:
    p = Problems()
    if not isinstance(edits, list):
        p.add(path, "must be a list of edits")
        return p.items
    for i, e in enumerate(edits):
        ep = f"{path}[{i}]"
        if not p.mapping(e, ep, EDIT_KEYS, " like {param: hidden.weight, op: set, value: 42}"):
            continue
        if not isinstance(e.get("param"), str):
            p.add(f"{ep}.param", "missing required value (a parameter name)")
        if e.get("op", "set") not in OPS:
            p.add(f"{ep}.op", f"unknown op {e.get('op')!r}{did_you_mean(str(e.get('op')), OPS)}; choose one of {', '.join(OPS)}")
        v = e.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            p.add(f"{ep}.value", f"must be a number, got {v!r}")
        if "index" in e and e["index"] is not None:
            try:
                parse_index(e["index"])
            except ValueError as err:
                p.add(f"{ep}.index", str(err))
    return p.items


def parse_index(index: Any) -> tuple:
    """``"0, 1:3"`` or ``[0, "1:3"]`` -> ``(0, slice(1, 3))``."""
    items = index.strip().strip("[]").split(",") if isinstance(index, str) else list(index if isinstance(index, (list, tuple)) else [index])
    out: list[Any] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"bad index element {item!r}")
        if isinstance(item, int):
            out.append(item)
            continue
        s = str(item).strip()
        try:
            if s == "...":
                out.append(Ellipsis)
            elif ":" in s:
                parts = [int(x) if x.strip() else None for x in s.split(":")]
                if len(parts) > 3:
                    raise ValueError
                out.append(slice(*parts))
            else:
                out.append(int(s))
        except ValueError:
            raise ValueError(f"bad index {index!r}: use integers and slices like '0, 1:3'") from None
    return tuple(out)


def edit(tensor: torch.Tensor, op: str, value: float, index: Any = None) -> None:
    """Apply one edit to ``tensor`` in place (Python API; raises IndexError/RuntimeError/ValueError)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
    target = tensor if index is None else tensor[parse_index(index)]
    with torch.no_grad():
        if op == "set":
            target.fill_(value)
        elif op == "add":
            target.add_(value)
        else:
            target.mul_(value)


def apply_edits(net, edits: list[dict], report=None, path: str = "init.edits") -> None:
    """Check every edit on copies, then apply them all (or raise listing every problem)."""
    if not edits:
        return
    problems = check_edits(edits, path)
    if problems:
        raise ConfigError(problems)
    table = dict(net.named_parameters(remove_duplicate=False))
    aliases = net.param_aliases()
    trial: dict[str, torch.Tensor] = {}
    p = Problems()
    for i, e in enumerate(edits):
        name = e["param"]
        if name not in table:
            p.add(f"{path}[{i}].param", f"no parameter named {name!r}{did_you_mean(name, table)}")
            continue
        canonical = aliases[name]
        t = trial.setdefault(canonical, table[canonical].detach().clone())
        try:
            edit(t, e.get("op", "set"), e["value"], e.get("index"))
        except (IndexError, RuntimeError, ValueError) as err:
            p.add(f"{path}[{i}].index", f"{name} has shape {list(t.shape)}: {first_line(err)}")
    p.raise_if_any("invalid init edits")
    entries = report.by_name() if report else {}
    with torch.no_grad():
        for canonical, t in trial.items():
            table[canonical].copy_(t)
    for i, e in enumerate(edits):
        if aliases[e["param"]] in entries:
            idx = f"[{e['index']}]" if e.get("index") is not None else ""
            entries[aliases[e["param"]]].edits.append(f"{e.get('op', 'set')}{idx} {e['value']}")


def edit_param(net, name: str, op: str, value: float, index: Any = None) -> None:
    """Python API: edit one parameter by name, e.g. ``edit_param(net, "hidden.weight", "set", 42, "0, 0")``."""
    edit(net.param(name), op, value, index)
