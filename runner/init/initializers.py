"""Initializers by name, with exactly ``torch.nn.init``'s semantics.

Each initializer fills a tensor in place from a ``torch.Generator``. The names and arguments are
torch's (Keras-style aliases such as ``glorot_uniform`` and ``he_normal`` map to the same
functions), so a rule ``{init: kaiming_normal, args: {mode: fan_out}}`` gives exactly what
``torch.nn.init.kaiming_normal_(w, mode="fan_out", generator=g)`` gives.

``default`` is the layer's own torch default (``nn.Linear`` and convolutions: Kaiming-uniform
with a=sqrt(5), bias U(+-1/sqrt(fan_in)); norms: ones and zeros; ``nn.Embedding``: N(0, 1)),
drawn from the same per-parameter generator so that it, too, is independent of construction
order. A module the runner does not know is reset by its own ``reset_parameters()``; buffers
keep the value they were constructed with.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import nn

from runner.model.modules import PositionalEmbedding

Initializer = Callable[..., Any]


def normal(t, g, mean: float = 0.0, std: float = 1.0):
    return nn.init.normal_(t, mean, std, generator=g)


def uniform(t, g, a: float = 0.0, b: float = 1.0):
    return nn.init.uniform_(t, a, b, generator=g)


def trunc_normal(t, g, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    return nn.init.trunc_normal_(t, mean, std, a, b, generator=g)


def zeros(t, g):
    return nn.init.zeros_(t)


def ones(t, g):
    return nn.init.ones_(t)


def constant(t, g, value: float = 0.0):
    return nn.init.constant_(t, value)


def xavier_uniform(t, g, gain: float = 1.0):
    return nn.init.xavier_uniform_(t, gain, generator=g)


def xavier_normal(t, g, gain: float = 1.0):
    return nn.init.xavier_normal_(t, gain, generator=g)


def kaiming_uniform(t, g, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    return nn.init.kaiming_uniform_(t, a, mode, nonlinearity, generator=g)


def kaiming_normal(t, g, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu"):
    return nn.init.kaiming_normal_(t, a, mode, nonlinearity, generator=g)


def orthogonal(t, g, gain: float = 1.0):
    return nn.init.orthogonal_(t, gain, generator=g)


def eye(t, g):
    return nn.init.eye_(t)


def sparse(t, g, sparsity: float = 0.1, std: float = 0.01):
    """``torch.nn.init.sparse_``, but the zero positions come from ``g`` too.

    torch draws the values from the generator and the zero positions from the global RNG, which
    would make the result depend on whatever ran before; here both come from ``g``.
    """
    if t.ndim != 2:
        raise ValueError("Only tensors with 2 dimensions are supported")
    rows, cols = t.shape
    num_zeros = math.ceil(sparsity * rows)
    with torch.no_grad():
        t.normal_(0, std, generator=g)
        for col in range(cols):
            t[torch.randperm(rows, generator=g)[:num_zeros], col] = 0
    return t


BUILTINS: dict[str, Initializer] = {
    "normal": normal,
    "uniform": uniform,
    "trunc_normal": trunc_normal,
    "zeros": zeros,
    "ones": ones,
    "constant": constant,
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform,
    "he_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
    "he_normal": kaiming_normal,
    "orthogonal": orthogonal,
    "eye": eye,
    "sparse": sparse,
}
MATRIX_ONLY = {"xavier_uniform", "glorot_uniform", "xavier_normal", "glorot_normal", "kaiming_uniform",
               "he_uniform", "kaiming_normal", "he_normal", "orthogonal", "eye", "sparse"}
DEFAULT = "default"


def layer_default(module: nn.Module, attr: str, t: torch.Tensor, g: torch.Generator) -> str:
    """Fill ``t`` the way ``module``'s own initialisation would, drawing from ``g``; return a
    description. Buffers (and tensors of modules that have no initialisation of their own) keep
    the value they were constructed with."""
    if attr in module._buffers:
        return "as constructed"
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and attr == "weight":
        nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)
        return "kaiming_uniform(a=sqrt(5))"
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and attr == "bias":
        fan_in = nn.init._calculate_fan_in_and_fan_out(module.weight)[0]
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(t, -bound, bound, generator=g)
        return f"uniform(+-1/sqrt({fan_in}))"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)):
        (nn.init.ones_ if attr == "weight" else nn.init.zeros_)(t)
        return "ones" if attr == "weight" else "zeros"
    if isinstance(module, nn.Embedding) and attr == "weight":
        nn.init.normal_(t, generator=g)
        if module.padding_idx is not None:
            with torch.no_grad():
                t[module.padding_idx].zero_()
            return f"normal(0, 1), row {module.padding_idx} zero"
        return "normal(0, 1)"
    if isinstance(module, PositionalEmbedding):
        nn.init.normal_(t, 0.0, 0.02, generator=g)
        return "normal(0, 0.02)"
    return _reset_parameters(module, attr, t, g)


def _reset_parameters(module: nn.Module, attr: str, t: torch.Tensor, g: torch.Generator) -> str:
    """A module torch or the runner does not know: its own ``reset_parameters()``, run on a
    global RNG seeded from ``g`` and undone for every other tensor, so only ``t`` changes."""
    reset = getattr(module, "reset_parameters", None)
    if not callable(reset):
        return "as constructed"
    state = {id(x): x.detach().clone() for x in [*module.parameters(), *module.buffers()]}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        reset()
        value = getattr(module, attr).detach().clone()
        for x in [*module.parameters(), *module.buffers()]:
            x.copy_(state[id(x)])
        t.copy_(value)
    return f"{type(module).__name__}.reset_parameters"


def resolve(name: str) -> Initializer:
    """A built-in by name, or user code by dotted path (``package.module.function_or_class``).

    Naming code in a config runs that code: treat configs like the code they name.
    """
    from runner.code import locate

    if name in BUILTINS:
        return BUILTINS[name]
    if "." not in name:
        raise LookupError(name)
    obj = locate(name)
    if not callable(obj):
        raise TypeError(f"{name} is not callable")
    return obj


def arg_problems(name: str, fn: Initializer, args: dict) -> list[str]:
    """Messages for arguments the initializer does not take (built-ins only; user code is trusted)."""
    if name not in BUILTINS:
        return []
    params = list(inspect.signature(fn).parameters)[2:]
    return [f"{name} takes no argument {a!r}" + (f"; it takes {', '.join(params)}" if params else "")
            for a in args if a not in params]


def call(fn: Initializer, args: dict, t: torch.Tensor, g: torch.Generator) -> None:
    """Run a built-in or user initializer on ``t`` in place.

    User code may be a function ``f(tensor, generator, **args)`` that fills the tensor or returns
    a new one of the same shape, or a class built with ``**args`` whose instances are such
    functions.
    """
    if inspect.isclass(fn):
        fn, args = fn(**args), {}
    out = fn(t, g, **args)
    if isinstance(out, torch.Tensor) and out is not t:
        if out.shape != t.shape:
            raise ValueError(f"returned shape {tuple(out.shape)}, expected {tuple(t.shape)}")
        t.copy_(out)
