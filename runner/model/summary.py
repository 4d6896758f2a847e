"""Model summary: one row per module of the config tree, rows that add up to the total.

Leaf rows carry the parameters a layer owns; a block row carries the subtotal of its subtree
(shown in parentheses, not added again). A parameter shared by several layers (a reused layer or
a tie group) is counted on the row of its first use; later uses are marked as shared and count 0,
so the leaf rows always add up to ``total``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner.model.build import Network


@dataclass
class Row:
    name: str
    type: str
    depth: int
    out_shape: tuple[int, ...]
    params: int          # parameters counted on this row (0 for blocks and shared uses)
    subtotal: int        # for blocks: distinct parameters in the subtree; for leaves: == params
    is_block: bool
    shared: list[str] = field(default_factory=list)  # canonical names of parameters this row shares


@dataclass
class Summary:
    model: str
    rows: list[Row]
    total: int
    trainable: int

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable


def summarize(net: Network) -> Summary:
    counted: set[int] = set()
    rows: list[Row] = []
    canonical = {id(p): n for n, p in net.params().items()}
    for name, info in net.infos.items():
        if name == "":
            continue
        module = net.module(name)
        depth = name.count(".")
        if info.is_block:
            rows.append(Row(name, info.type, depth, info.out_shape, 0, 0, True))
            continue
        own = 0
        shared = []
        for pname, p in module.named_parameters(prefix=name, remove_duplicate=False):
            if id(p) in counted:
                shared.append(canonical[id(p)])
                continue
            counted.add(id(p))
            own += p.numel()
        rows.append(Row(name, info.type, depth, info.out_shape, own, own, False, shared))
    # block subtotals: distinct parameters anywhere below the block
    for row in rows:
        if row.is_block:
            seen = {id(p): p.numel() for p in net.module(row.name).parameters()}
            row.subtotal = sum(seen.values())
    params = net.params().values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return Summary(net.config.get("name", "model"), rows, total, trainable)
