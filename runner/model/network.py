"""The built model: any ``nn.Module`` with named access to everything inside it.

A model declared as a config tree is an ``nn.Sequential`` at the root (index paths such as
``net[0][1][1].bias`` work); a model given by ``_target_`` is the user's own module. Either way
the root gets the :class:`Network` methods (by a subclass made for its class, the way
``torch.nn.utils.parametrize`` and FSDP extend modules in place), so names, init, ties,
statistics and checkpoints treat both alike.

Tensors are *parameters* (trained) and *buffers* (state such as batch-norm running statistics:
non-trainable, checkpointed, never optimised or tied). Each distinct tensor has a canonical name,
its first use in model order; other names that reach it (a reused layer, a tie group) are
aliases.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from runner import names as N
from runner.errors import UserError, did_you_mean


@dataclass
class ModuleInfo:
    """What the builder knows about one module of the model (every module, not only declared ones)."""

    name: str                  # dotted module name, "" for the root
    type: str                  # node type from the config, or the type name of its torch class
    config_path: str           # where it was declared (the nearest declared node), e.g. "model.layers[0]"
    out_shape: tuple[int, ...]
    is_block: bool             # has child modules
    reuse_of: str | None = None  # a second use of a module: the name of its first use
    declared: bool = False     # a node of the config tree (not a module inside one)
    copy_index: int | None = None  # a copy made by ``repeat`` (or an item of a ModuleList): its index
    copies: int | None = None      # ... and how many copies there are
    cls: str = ""              # the torch class name


class Network(nn.Module):
    """Mixin for the root module of a built model (see the module docstring)."""

    infos: dict[str, ModuleInfo]
    config: dict
    transposed_aliases: dict[str, str]
    output_problem: str | None = None  # why its output does not fit the data's loss (training refuses it)

    # Parameters -------------------------------------------------------------------------------
    def _named(self):
        """(name, parameter) for every use, without torch's internal parametrization names."""
        return [(n, p) for n, p in self.named_parameters(remove_duplicate=False) if ".parametrizations." not in n]

    def params(self) -> "OrderedDict[str, nn.Parameter]":
        """Every distinct parameter by its canonical name (its first use in model order)."""
        return _distinct(self._named())

    def param_aliases(self) -> "OrderedDict[str, str]":
        """Every name a parameter can be reached by (shared uses included) -> canonical name."""
        return _aliases(self._named(), self.params())

    def param(self, name: str) -> torch.Tensor:
        """The parameter (or buffer) called ``name`` (canonical or alias name).

        For the transposed side of a transposed tie this is the computed view (``W.T``) of the
        stored parameter, which :meth:`params` lists under its canonical name.
        """
        if name in self.transposed_aliases:
            return getattr(self.module(N.parent(name)), N.leaf(name))
        table = dict(self._named())
        if name not in table:
            buffers = dict(self._named_buffers())
            if name in buffers:
                return buffers[name]
            choices = [*table, *self.transposed_aliases, *buffers]
            raise UserError(f"no parameter named {name!r}{did_you_mean(name, choices)}")
        return table[name]

    # Buffers ------------------------------------------------------------------------------------
    def _named_buffers(self):
        """(name, buffer) for every use of every persistent buffer (the ones in ``state_dict``)."""
        out = []
        for mname, m in self.named_modules(remove_duplicate=False):
            for bname, b in m._buffers.items():
                if b is not None and bname not in m._non_persistent_buffers_set:
                    out.append((N.join(mname, bname), b))
        return out

    def buffers_by_name(self) -> "OrderedDict[str, torch.Tensor]":
        """Every distinct persistent buffer by its canonical name."""
        return _distinct(self._named_buffers())

    def buffer_aliases(self) -> "OrderedDict[str, str]":
        return _aliases(self._named_buffers(), self.buffers_by_name())

    def tensors(self) -> "OrderedDict[str, torch.Tensor]":
        """Parameters, then buffers: everything a checkpoint holds, by canonical name."""
        return OrderedDict([*self.params().items(), *self.buffers_by_name().items()])

    # Modules ------------------------------------------------------------------------------------
    def module(self, name: str) -> nn.Module:
        """The module called ``name`` ('' is the root)."""
        if name == "":
            return self
        table = dict(self.named_modules(remove_duplicate=False))
        if name not in table:
            raise UserError(f"no module named {name!r}{did_you_mean(name, table)}")
        return table[name]

    def leaf_modules(self) -> list[str]:
        """Names of the modules without children, every use, in model order: the layers that
        activation statistics and reports describe."""
        return [n for n, i in self.infos.items() if n and not i.is_block]


def _distinct(named) -> "OrderedDict[str, torch.Tensor]":
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    seen: set[int] = set()
    for n, t in named:
        if id(t) not in seen:
            seen.add(id(t))
            out[n] = t
    return out


def _aliases(named, canonical_table) -> "OrderedDict[str, str]":
    canonical = {id(t): n for n, t in reversed(canonical_table.items())}
    return OrderedDict((n, canonical[id(t)]) for n, t in named)


_CLASSES: dict[type, type] = {}


def as_network(module: nn.Module, infos: dict[str, ModuleInfo], config: dict) -> Network:
    """Give ``module`` the :class:`Network` methods in place (a subclass of its own class)."""
    if not isinstance(module, Network):
        cls = type(module)
        sub = _CLASSES.get(cls)
        if sub is None:
            sub = _CLASSES[cls] = type(cls.__name__, (Network, cls), {"__module__": cls.__module__})
        module.__class__ = sub
    module.infos = infos
    module.config = config
    module.transposed_aliases = {}
    return module  # type: ignore[return-value]
