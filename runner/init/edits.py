"""Direct edits of parameter values after initialisation (the chapter's ``w + 1``, ``w[0, 0] = 42``).

An edit is ``{param: NAME, op: set|add|mul, value: NUMBER, index: INDEX}``; ``index`` is
optional and written like Python subscripts, as a string (``"0, 0"``, ``":, 1"``, ``"0:2"``) or a
list (``[0, 0]``). All edits are checked on copies first: if any is wrong, none is applied.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

import torch
from pydantic import Field

from runner.errors import Problems, did_you_mean, first_line
from runner.schema import Float, Noun, Schema, Text

OPS = ("set", "add", "mul")


class Edit(Schema):
    """One direct edit of a tensor's values."""

    param: Text = Field(description="the tensor's name (a parameter or a buffer)")
    op: Annotated[Literal["set", "add", "mul"], Noun("op")] = Field("set", description="set, add or mul")
    value: Float = Field(description="the number to set, add or multiply by")
    index: Optional[Union[Annotated[int, Field(strict=True)], str, list[Union[Annotated[int, Field(strict=True)], str]]]] = Field(
        None, description="Python subscript, e.g. '0, 0' or '0:2' (default: the whole tensor)")

    def problems(self):
        if self.index is not None:
            try:
                parse_index(self.index)
            except ValueError as err:
                yield "index", str(err)


def check_edits(edits: Any, path: str) -> list:
    from runner.schema import Problem

    if not isinstance(edits, list):
        return [Problem(path, "must be a list of edits")]
    return [q for i, e in enumerate(edits) for q in Edit.parse(e, f"{path}[{i}]")[1]]


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


def apply_edits(net, edits: list, report=None, path: str = "init.edits") -> None:
    """Check every edit on copies, then apply them all (or raise listing every problem)."""
    if not edits:
        return
    edits = [Edit.of(e, f"{path}[{i}]") for i, e in enumerate(edits)]
    table = {**dict(net.named_parameters(remove_duplicate=False)), **dict(net._named_buffers())}
    aliases = {**net.param_aliases(), **net.buffer_aliases()}
    trial: dict[str, torch.Tensor] = {}
    p = Problems()
    for i, e in enumerate(edits):
        if e.param not in table:
            p.add(f"{path}[{i}].param", f"no parameter named {e.param!r}{did_you_mean(e.param, table)}")
            continue
        canonical = aliases[e.param]
        t = trial.setdefault(canonical, table[canonical].detach().clone())
        try:
            edit(t, e.op, e.value, e.index)
        except (IndexError, RuntimeError, ValueError) as err:
            p.add(f"{path}[{i}].index", f"{e.param} has shape {list(t.shape)}: {first_line(err)}")
    p.raise_if_any("invalid init edits")
    entries = report.by_name() if report else {}
    with torch.no_grad():
        for canonical, t in trial.items():
            table[canonical].copy_(t)
    for e in edits:
        if aliases[e.param] in entries:
            idx = f"[{e.index}]" if e.index is not None else ""
            entries[aliases[e.param]].edits.append(f"{e.op}{idx} {e.value:g}")


def edit_param(net, name: str, op: str, value: float, index: Any = None) -> None:
    """Python API: edit one parameter by name, e.g. ``edit_param(net, "hidden.weight", "set", 42, "0, 0")``."""
    edit(net.param(name), op, value, index)
