"""Model summary: one row per module, rows that add up to the total.

A row counts the tensors its module holds itself (parameters, and buffers such as batch-norm
running statistics, which count as non-trainable as Keras counts them); a module with children
also shows the subtotal of its subtree (in parentheses, not added again). A tensor shared by
several modules (a reused layer or a tie group) is counted on the row of its first use; later uses
are marked as shared and count 0, so the rows always add up to ``total``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from runner import names as N
from runner.model.network import Network


@dataclass
class Row:
    name: str
    type: str
    depth: int
    out_shape: tuple[int, ...]
    params: int          # values counted on this row (parameters and buffers it holds itself)
    subtotal: int        # distinct values in the subtree (== params for a module without children)
    is_block: bool
    shared: list[str] = field(default_factory=list)  # canonical names of tensors this row shares
    buffers: int = 0     # how many of ``params`` are buffer values (non-trainable state)


@dataclass
class Summary:
    model: str
    rows: list[Row]
    total: int
    trainable: int
    buffers: int = 0     # buffer values (part of the non-trainable count)

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable


def logical_name(name: str) -> str:
    """``dec.parametrizations.weight.original`` -> ``dec.weight``: a parametrized tensor's name."""
    if ".parametrizations." not in name:
        return name
    owner, _, rest = name.partition(".parametrizations.")
    return N.join(owner, rest.split(".")[0])


def own_tensors(module, name: str):
    """(name, tensor, is_buffer) for what ``module`` (called ``name``) holds itself, every use."""
    for n, p in module.named_parameters(prefix=name, remove_duplicate=False):
        if N.parent(logical_name(n)) == name:
            yield logical_name(n), p, False
    for bname, b in module._buffers.items():
        if b is not None and bname not in module._non_persistent_buffers_set:
            yield N.join(name, bname), b, True


def summarize(net: Network) -> Summary:
    counted: set[int] = set()
    rows: list[Row] = []
    canonical = {id(t): n for n, t in net.tensors().items()}
    modules = dict(net.named_modules(remove_duplicate=False))
    for name, info in net.infos.items():
        module = modules[name]
        own = bufs = 0
        shared = []
        for _, t, is_buffer in own_tensors(module, name):
            if id(t) in counted:
                shared.append(canonical.get(id(t), "?"))
                continue
            counted.add(id(t))
            own += t.numel()
            bufs += t.numel() if is_buffer else 0
        shared += [f"{c} (transposed)" for a, c in net.transposed_aliases.items() if N.parent(a) == name]
        if name == "" and not own:
            continue  # the root row only when the root holds tensors itself
        subtotal = own
        if info.is_block:
            seen = {id(p): p.numel() for p in module.parameters()}
            seen.update({id(b): b.numel() for _, b, is_b in _subtree_buffers(module)})
            subtotal = sum(seen.values())
        rows.append(Row(name, info.type, name.count(".") if name else 0, info.out_shape, own, subtotal,
                        info.is_block, shared, bufs))
    tensors = net.tensors()
    params = net.params()
    total = sum(t.numel() for t in tensors.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    buffers = sum(b.numel() for b in net.buffers_by_name().values())
    return Summary(net.config.get("name", "model") if isinstance(net.config, dict) else "model", rows, total,
                   trainable, buffers)


def _subtree_buffers(module):
    for m in module.modules():
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                yield bname, b, True
