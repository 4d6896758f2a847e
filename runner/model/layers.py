"""Layer registry: the node types a model config may use, their fields, and how each is built.

Each entry says which keys a node of that type accepts, which are required, how each value is
checked, and how to build the torch module once the input shape is known. Validation and
building both read this table, so a type cannot be buildable yet unvalidated or the reverse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from runner.errors import did_you_mean, one_of

ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


class Dense(nn.Linear):
    """A linear layer with an optional activation applied to its output (Keras' ``Dense``).

    The activation is a plain function, not a child module, so the layer's parameters are just
    ``weight`` and ``bias`` and index paths such as ``model[0][1][1].bias`` reach them directly.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None):
        super().__init__(in_features, out_features, bias=bias)
        self.activation = activation
        self._act = ACTIVATION_FUNCTIONS[activation] if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return self._act(y) if self._act is not None else y

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return super().extra_repr() + act


# --- field checks: each returns an error message or None -----------------------------------

def _pos_int(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        return f"must be a positive integer, got {v!r}"
    return None


def _int(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return f"must be an integer, got {v!r}"
    return None


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _pos_float(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        return f"must be a positive number, got {v!r}"
    return None


def _prob(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        return f"must be a probability in [0, 1), got {v!r}"
    return None


def _activation(v: Any) -> str | None:
    if v is None or v in ACTIVATION_FUNCTIONS:
        return None
    return f"unknown activation {v!r}{did_you_mean(str(v), ACTIVATION_FUNCTIONS)}; choose one of {one_of(ACTIVATION_FUNCTIONS)} or null"


def _name(v: Any) -> str | None:
    if not isinstance(v, str) or not v or "." in v:
        return f"must be a non-empty name without dots, got {v!r}"
    return None


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {v!r}"


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], str | None]
    required: bool = False
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class LayerType:
    """A leaf layer: fields plus a builder from (fields, input shape) to a module."""

    name: str
    fields: dict[str, Field]
    build: Callable[[dict[str, Any], tuple[int, ...]], nn.Module]
    doc: str = ""


def _flatten(f: dict, shape: tuple[int, ...]) -> nn.Module:
    return nn.Flatten(start_dim=f["start_dim"])


def _linear(f: dict, shape: tuple[int, ...]) -> nn.Module:
    inferred = shape[-1]
    if f.get("in") is not None and f["in"] != inferred:
        raise ShapeError("in", f"is {f['in']} but the input to this layer has {inferred} features")
    return Dense(inferred, f["out"], bias=f["bias"], activation=f["activation"])


def _layernorm(f: dict, shape: tuple[int, ...]) -> nn.Module:
    return nn.LayerNorm(shape[-1], eps=f["eps"], elementwise_affine=f["affine"])


class ShapeError(Exception):
    """Raised by a builder when the inferred input shape does not fit the node's fields."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


_ACT_LAYERS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}

LAYER_TYPES: dict[str, LayerType] = {
    "flatten": LayerType("flatten", {"start_dim": Field(_int, default=1)}, _flatten,
                         "flattens all but the batch dimension"),
    "linear": LayerType(
        "linear",
        {
            "out": Field(_pos_int, required=True, help="output features"),
            "in": Field(_pos_int, help="input features; inferred from the data when omitted"),
            "bias": Field(_bool, default=True),
            "activation": Field(_activation, default=None),
        },
        _linear,
        "fully connected layer (Keras Dense), optional activation",
    ),
    "dropout": LayerType("dropout", {"p": Field(_prob, default=0.5)}, lambda f, s: nn.Dropout(f["p"])),
    "layernorm": LayerType(
        "layernorm",
        {"eps": Field(_pos_float, default=1e-5), "affine": Field(_bool, default=True)},
        _layernorm,
    ),
    **{
        name: LayerType(name, {}, (lambda cls: lambda f, s: cls())(cls), f"{name} activation")
        for name, cls in _ACT_LAYERS.items()
    },
}
LAYER_ALIASES = {"dense": "linear"}

# Container nodes: built by runner.model.build, validated from these field tables.
COMMON_FIELDS = {"type": Field(_str, required=True), "name": Field(_name)}
CONTAINER_FIELDS: dict[str, dict[str, Field]] = {
    "sequential": {"layers": Field(lambda v: None, required=True, help="list of child nodes")},
    "repeat": {
        "times": Field(_pos_int, required=True),
        "block": Field(lambda v: None, required=True, help="the node to copy"),
        "names": Field(lambda v: None, help="explicit names for the copies"),
        "name_format": Field(_str, default="block-{i}"),
    },
    "reuse": {"layer": Field(_str, required=True, help="name of an earlier sibling layer to use again")},
}
CONTAINER_ALIASES = {"block": "sequential"}


def canonical_type(t: str) -> str:
    return LAYER_ALIASES.get(t, CONTAINER_ALIASES.get(t, t))


def all_type_names() -> list[str]:
    return [*LAYER_TYPES, *LAYER_ALIASES, *CONTAINER_FIELDS, *CONTAINER_ALIASES]


def fields_of(type_name: str) -> dict[str, Field]:
    t = canonical_type(type_name)
    own = LAYER_TYPES[t].fields if t in LAYER_TYPES else CONTAINER_FIELDS[t]
    return {**COMMON_FIELDS, **own}


def with_defaults(node: dict[str, Any]) -> dict[str, Any]:
    out = dict(node)
    for key, spec in fields_of(node["type"]).items():
        out.setdefault(key, spec.default)
    return out
