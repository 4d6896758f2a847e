"""The torch modules behind the built-in node types that torch does not have as such.

Every module here is plain torch: a model built from a config can be saved, wrapped (DDP, FSDP),
compiled and used without the runner.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
}


class WithActivation:
    """Mixin: an activation applied to the layer's output, as a plain function (not a child
    module), so the layer's parameters stay ``weight`` and ``bias`` and index paths such as
    ``model[0][1][1].bias`` reach them directly (Keras' ``Dense(..., activation=...)``)."""

    activation: str | None

    def _set_activation(self, activation: str | None) -> None:
        self.activation = activation
        self._act = ACTIVATION_FUNCTIONS[activation] if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # type: ignore[misc]
        return self._act(y) if self._act is not None else y

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return super().extra_repr() + act  # type: ignore[misc]


class Dense(WithActivation, nn.Linear):
    """A linear layer with an optional activation (Keras' ``Dense``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._set_activation(activation)


class Conv1d(WithActivation, nn.Conv1d):
    def __init__(self, *args, activation: str | None = None, **kwargs):
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._set_activation(activation)


class Conv2d(WithActivation, nn.Conv2d):
    def __init__(self, *args, activation: str | None = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._set_activation(activation)


class Reshape(nn.Module):
    """Reshape each sample (the batch dimension is kept)."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={list(self.shape)}"


class Permute(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={list(self.dims)}"


class PositionalEmbedding(nn.Module):
    """A learned position embedding added to its input ``(N, T, d)``: ``x + weight[:T]``."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        nn.init.normal_(self.weight, 0.0, 0.02, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.shape[1]]

    def extra_repr(self) -> str:
        return f"max_len={self.weight.shape[0]}, dim={self.weight.shape[1]}"


class Attention(nn.Module):
    """Multi-head self-attention on ``(N, T, d)`` built on ``F.scaled_dot_product_attention``:
    ``qkv`` projects to queries, keys and values at once, ``proj`` is the output projection."""

    def __init__(self, dim: int, heads: int, causal: bool = True, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(n, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=self.causal)
        y = F.dropout(self.proj(y.transpose(1, 2).reshape(n, t, d)), self.dropout, self.training)
        return y

    def extra_repr(self) -> str:
        return f"heads={self.heads}, causal={self.causal}, dropout={self.dropout}"


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc = Dense(dim, hidden, bias=bias, activation=activation)
        self.proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.proj(self.fc(x)), self.dropout, self.training)


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``+ mlp(norm2(x))``.

    The residual branches end in ``attn.proj`` and ``mlp.proj`` (GPT-2's ``c_proj``), the
    projections a depth-scaled init targets.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, causal: bool = True,
                 norm: str = "layernorm", activation: str = "gelu", bias: bool = True):
        super().__init__()
        make_norm = (lambda: nn.LayerNorm(dim)) if norm == "layernorm" else (lambda: nn.RMSNorm(dim))
        self.norm1 = make_norm()
        self.attn = Attention(dim, heads, causal, dropout, bias)
        self.norm2 = make_norm()
        self.mlp = MLP(dim, max(1, int(round(mlp_ratio * dim))), activation, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Residual(nn.Module):
    """``activation(body(x) + proj(x))``: the body's layers are this module's children, in order;
    ``proj`` (when present) maps the input to the body's output shape."""

    def __init__(self, body: "OrderedDict[str, nn.Module]", proj: nn.Module | None = None,
                 activation: str | None = None):
        super().__init__()
        for name, m in body.items():
            self.add_module(name, m)
        self.body_names = list(body)
        if proj is not None:
            self.proj = proj
        self.has_proj = proj is not None
        self.activation = activation
        self._act = ACTIVATION_FUNCTIONS[activation] if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name in self.body_names:
            y = self._modules[name](y)
        y = y + (self.proj(x) if self.has_proj else x)
        return self._act(y) if self._act is not None else y


def projection(x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> nn.Module | str:
    """A learned map from inputs shaped ``x_shape`` to outputs shaped ``y_shape`` (a linear map
    of the last dimension, or a strided 1x1 convolution of the channels), or why there is none."""
    if len(x_shape) != len(y_shape):
        return f"the body changes the rank from {list(x_shape)} to {list(y_shape)}"
    if x_shape[:-1] == y_shape[:-1]:
        return nn.Linear(x_shape[-1], y_shape[-1], bias=False)
    if len(x_shape) in (3, 4) and x_shape[0] == y_shape[0]:
        strides = []
        for a, b in zip(x_shape[2:], y_shape[2:]):
            s = max(1, math.ceil(a / b))
            if math.ceil(a / s) != b:
                return f"no strided 1x1 convolution maps {list(x_shape)} to {list(y_shape)}"
            strides.append(s)
        conv = nn.Conv1d if len(x_shape) == 3 else nn.Conv2d
        return conv(x_shape[1], y_shape[1], kernel_size=1, stride=tuple(strides), bias=False)
    return f"no projection maps {list(x_shape)} to {list(y_shape)}"
