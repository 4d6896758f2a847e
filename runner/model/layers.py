"""Node types: what a model config may declare, one typed schema each.

Every node type is a :class:`Node` subclass: its fields (types, defaults, docs) and, for layers,
a ``build(x, ctx)`` that makes the torch module once the input ``x`` (a sample batch) is known, so
that no input size is ever repeated in a config. Validation, building, ``runner layers`` and the
README's table all read these classes.

Containers (``sequential``, ``repeat``, ``reuse``, ``residual``) hold other nodes and are built
by ``runner.model.build``; ``module`` builds any ``nn.Module`` by dotted path with Hydra's
``instantiate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import torch
from pydantic import Field, PrivateAttr, field_validator
from torch import nn

from runner.model import modules as M
from runner.schema import (
    Expect,
    Float,
    Int,
    IntList,
    Name,
    NonNegInt,
    Noun,
    PosFloat,
    PosInt,
    Prob,
    Schema,
    Text,
    check_name,
)

ActivationName = Annotated[Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"], Noun("activation")]
Activation = Optional[ActivationName]
Size = Annotated[Union[Annotated[int, Field(strict=True, gt=0)], list[Annotated[int, Field(strict=True, gt=0)]]],
                 Expect("a positive integer or a list of them")]
Padding = Annotated[Union[Annotated[int, Field(strict=True, ge=0)], list[Annotated[int, Field(strict=True, ge=0)]],
                          Literal["same", "valid"]],
                    Expect("a non-negative integer, a list of them, 'same' or 'valid'")]
AutoSize = Annotated[Union[Annotated[int, Field(strict=True, gt=0)], Literal["auto"]],
                     Expect("a positive integer or 'auto' (the data's size)")]


class ShapeError(Exception):
    """Raised by a builder when the input does not fit the node's fields; ``key`` names the field
    (or "" for the node as a whole)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass
class BuildContext:
    """What the data says about sizes a node may leave to it (``out: auto``, ``vocab: auto``)."""

    out_features: int | None = None   # classes, target width, or vocabulary for language models
    vocab: int | None = None           # token vocabulary, for embeddings
    task: str | None = None            # classification | lm | regression: what the output must fit


class Node(Schema):
    """Fields every node has."""

    type: str = Field(description="the node type")
    name: Optional[Name] = Field(None, description="the node's name; default <type>-<position>")

    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    container: ClassVar[bool] = False
    _children: list = PrivateAttr(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v):
        return check_name(v) if v is not None else v

    @classmethod
    def type_label(cls) -> str:
        return cls.type_name

    @property
    def children(self) -> list["Node"]:
        """Parsed child nodes (containers)."""
        return self._children


class Layer(Node):
    """A node that builds one module from its input."""

    def build(self, x: torch.Tensor, ctx: BuildContext) -> nn.Module:
        raise NotImplementedError


def _rank(x: torch.Tensor, ranks: tuple[int, ...], what: str) -> None:
    if x.dim() not in ranks:
        raise ShapeError("type", f"{what}, got an input of shape {list(x.shape)}")


def _auto(value: Any, known: int | None, key: str, what: str) -> int:
    if value != "auto":
        return int(value)
    if known is None:
        raise ShapeError(key, f"is auto, but the data gives no {what}; set a number")
    return known


# --- dense and convolutional layers ----------------------------------------------------------------

class Linear(Layer):
    """Fully connected layer on the last dimension (Keras Dense), optional activation."""

    type_name = "linear"
    aliases = ("dense",)
    out: AutoSize = Field(description="output features; auto: the data's classes / target width / vocabulary")
    in_: Optional[PosInt] = Field(None, alias="in", description="input features; inferred (checked when given)")
    bias: bool = Field(True, description="learn an additive bias")
    activation: Activation = Field(None, description="applied to the output")

    def build(self, x, ctx):
        inferred = x.shape[-1]
        if self.in_ is not None and self.in_ != inferred:
            raise ShapeError("in", f"is {self.in_} but the input to this layer has {inferred} features")
        out = _auto(self.out, ctx.out_features, "out", "output size")
        return M.Dense(inferred, out, bias=self.bias, activation=self.activation)


class _Conv(Layer):
    channels: PosInt = Field(description="output channels")
    kernel: Size = Field(description="kernel size")
    stride: Size = Field(1, description="stride")
    padding: Padding = Field(0, description="zero padding, or same / valid")
    dilation: Size = Field(1, description="spacing between kernel elements")
    groups: PosInt = Field(1, description="blocked connections; divides input and output channels")
    bias: bool = Field(True, description="learn an additive bias")
    activation: Activation = Field(None, description="applied to the output")

    dims: ClassVar[int] = 2

    def build(self, x, ctx):
        names = "(N, C, L)" if self.dims == 1 else "(N, C, H, W)"
        _rank(x, (self.dims + 2,), f"{self.type_name} needs inputs shaped {names}; add a reshape before it")
        cin = x.shape[1]
        for key, n in (("groups", cin), ("groups", self.channels)):
            if n % self.groups:
                raise ShapeError(key, f"is {self.groups}, which does not divide the {n} "
                                      f"{'input' if n == cin else 'output'} channels")
        for key in ("kernel", "stride", "dilation"):
            v = getattr(self, key)
            if isinstance(v, list) and len(v) != self.dims:
                raise ShapeError(key, f"has {len(v)} values for a {self.dims}-d convolution")
        if isinstance(self.padding, list) and len(self.padding) != self.dims:
            raise ShapeError("padding", f"has {len(self.padding)} values for a {self.dims}-d convolution")
        if self.padding == "same" and self.stride not in (1, [1] * self.dims):
            raise ShapeError("padding", "same needs stride 1")
        cls = M.Conv1d if self.dims == 1 else M.Conv2d
        tup = (lambda v: tuple(v) if isinstance(v, list) else v)
        return cls(cin, self.channels, tup(self.kernel), stride=tup(self.stride), padding=tup(self.padding),
                   dilation=tup(self.dilation), groups=self.groups, bias=self.bias, activation=self.activation)


class Conv1d(_Conv):
    """1-d convolution over (N, C, L), optional activation; input channels inferred."""

    type_name = "conv1d"
    dims = 1


class Conv2d(_Conv):
    """2-d convolution over (N, C, H, W), optional activation; input channels inferred."""

    type_name = "conv2d"
    dims = 2


# --- pooling ----------------------------------------------------------------------------------------

class _Pool(Layer):
    kernel: Size = Field(description="window size")
    stride: Optional[Size] = Field(None, description="default: the window size")
    padding: Annotated[Union[Annotated[int, Field(strict=True, ge=0)], list[Annotated[int, Field(strict=True, ge=0)]]],
                       Expect("a non-negative integer or a list of them")] = Field(0, description="zero padding")

    def build(self, x, ctx):
        _rank(x, (3, 4), f"{self.type_name} needs inputs shaped (N, C, L) or (N, C, H, W)")
        one = x.dim() == 3
        cls = {"maxpool": (nn.MaxPool1d, nn.MaxPool2d), "avgpool": (nn.AvgPool1d, nn.AvgPool2d)}[self.type_name][not one]
        tup = (lambda v: tuple(v) if isinstance(v, list) else v)
        return cls(tup(self.kernel), stride=tup(self.stride), padding=tup(self.padding))


class MaxPool(_Pool):
    """Max pooling, 1-d or 2-d by the input's rank."""

    type_name = "maxpool"


class AvgPool(_Pool):
    """Average pooling, 1-d or 2-d by the input's rank."""

    type_name = "avgpool"


class AdaptiveAvgPool(Layer):
    """Average pooling to a fixed output size (1: global average pooling), 1-d or 2-d by rank."""

    type_name = "adaptive_avgpool"
    size: Size = Field(1, description="output size")

    def build(self, x, ctx):
        _rank(x, (3, 4), "adaptive_avgpool needs inputs shaped (N, C, L) or (N, C, H, W)")
        size = tuple(self.size) if isinstance(self.size, list) else self.size
        return nn.AdaptiveAvgPool1d(size) if x.dim() == 3 else nn.AdaptiveAvgPool2d(size)


# --- normalisation ---------------------------------------------------------------------------------

class BatchNorm(Layer):
    """Batch normalisation over channels (dim 1); 1-d for (N, C) / (N, C, L), 2-d for (N, C, H, W).
    Its running mean and variance are buffers: non-trainable, checkpointed, never optimised."""

    type_name = "batchnorm"
    eps: PosFloat = Field(1e-5, description="added to the variance")
    momentum: Optional[Annotated[float, Field(gt=0, le=1), Expect("a number in (0, 1]")]] = Field(
        0.1, description="running-statistics update rate; null: cumulative average")
    affine: bool = Field(True, description="learn a scale and a shift")
    track_running_stats: bool = Field(True, description="keep running statistics (buffers) for evaluation")

    def build(self, x, ctx):
        _rank(x, (2, 3, 4), "batchnorm needs inputs shaped (N, C), (N, C, L) or (N, C, H, W)")
        cls = nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d
        return cls(x.shape[1], eps=self.eps, momentum=self.momentum, affine=self.affine,
                   track_running_stats=self.track_running_stats)


class GroupNorm(Layer):
    """Group normalisation over channels (dim 1) in ``groups`` groups."""

    type_name = "groupnorm"
    groups: PosInt = Field(description="number of channel groups; divides the channels")
    eps: PosFloat = Field(1e-5, description="added to the variance")
    affine: bool = Field(True, description="learn a per-channel scale and shift")

    def build(self, x, ctx):
        _rank(x, (2, 3, 4), "groupnorm needs inputs shaped (N, C, ...)")
        if x.shape[1] % self.groups:
            raise ShapeError("groups", f"is {self.groups}, which does not divide the {x.shape[1]} channels")
        return nn.GroupNorm(self.groups, x.shape[1], eps=self.eps, affine=self.affine)


class LayerNorm(Layer):
    """Layer normalisation over the last dimension (its size is inferred)."""

    type_name = "layernorm"
    eps: PosFloat = Field(1e-5, description="added to the variance")
    affine: bool = Field(True, description="learn a scale and a shift")

    def build(self, x, ctx):
        return nn.LayerNorm(x.shape[-1], eps=self.eps, elementwise_affine=self.affine)


class RMSNorm(Layer):
    """Root-mean-square normalisation over the last dimension."""

    type_name = "rmsnorm"
    eps: Optional[PosFloat] = Field(None, description="added to the mean square; null: the dtype's epsilon")
    affine: bool = Field(True, description="learn a scale")

    def build(self, x, ctx):
        return nn.RMSNorm(x.shape[-1], eps=self.eps, elementwise_affine=self.affine)


# --- embeddings and attention --------------------------------------------------------------------

class Embedding(Layer):
    """Token embedding: integer ids (N, T) -> vectors (N, T, dim)."""

    type_name = "embedding"
    vocab: AutoSize = Field("auto", description="number of token ids; auto: the data's vocabulary")
    dim: PosInt = Field(description="embedding size")
    padding_idx: Optional[NonNegInt] = Field(None, description="an id whose vector stays zero and gets no gradient")

    def build(self, x, ctx):
        if x.is_floating_point():
            raise ShapeError("type", f"embedding needs integer token ids, got {str(x.dtype).replace('torch.', '')} "
                                     "inputs")
        vocab = _auto(self.vocab, ctx.vocab, "vocab", "vocabulary")
        top = int(x.max()) if x.numel() else 0
        if top >= vocab:
            raise ShapeError("vocab", f"is {vocab} but the data has token ids up to {top}")
        if self.padding_idx is not None and self.padding_idx >= vocab:
            raise ShapeError("padding_idx", f"is {self.padding_idx}, outside the vocabulary of {vocab}")
        return nn.Embedding(vocab, self.dim, padding_idx=self.padding_idx)


class PosEmbedding(Layer):
    """Learned positional embedding added to (N, T, d) inputs; d is inferred."""

    type_name = "pos_embedding"
    max_len: PosInt = Field(description="longest sequence it can embed")

    def build(self, x, ctx):
        _rank(x, (3,), "pos_embedding needs inputs shaped (N, T, d)")
        if x.shape[1] > self.max_len:
            raise ShapeError("max_len", f"is {self.max_len} but the input has sequences of {x.shape[1]}")
        return M.PositionalEmbedding(self.max_len, x.shape[-1])


class Attention(Layer):
    """Multi-head self-attention on (N, T, d) with scaled_dot_product_attention (children qkv, proj)."""

    type_name = "attention"
    heads: PosInt = Field(description="attention heads; divides d")
    causal: bool = Field(True, description="each position attends to itself and earlier ones only")
    dropout: Prob = Field(0.0, description="attention and output dropout while training")
    bias: bool = Field(True, description="biases in the qkv and output projections")

    def build(self, x, ctx):
        _rank(x, (3,), "attention needs inputs shaped (N, T, d)")
        if x.shape[-1] % self.heads:
            raise ShapeError("heads", f"is {self.heads}, which does not divide the {x.shape[-1]} features")
        return M.Attention(x.shape[-1], self.heads, self.causal, self.dropout, self.bias)


class TransformerBlock(Layer):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)) (children norm1, attn, norm2, mlp)."""

    type_name = "transformer_block"
    heads: PosInt = Field(description="attention heads; divides d")
    mlp_ratio: PosFloat = Field(4.0, description="MLP hidden size as a multiple of d")
    dropout: Prob = Field(0.0, description="dropout on both residual branches and attention while training")
    causal: bool = Field(True, description="causal self-attention")
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="the two normalisations")
    activation: ActivationName = Field("gelu", description="MLP activation")
    bias: bool = Field(True, description="biases in the linear layers")

    def build(self, x, ctx):
        _rank(x, (3,), "transformer_block needs inputs shaped (N, T, d)")
        if x.shape[-1] % self.heads:
            raise ShapeError("heads", f"is {self.heads}, which does not divide the {x.shape[-1]} features")
        return M.TransformerBlock(x.shape[-1], self.heads, self.mlp_ratio, self.dropout, self.causal, self.norm,
                                  self.activation, self.bias)


# --- shape ------------------------------------------------------------------------------------------

class Flatten(Layer):
    """Flattens dimensions start_dim..end_dim (default: all but the batch dimension)."""

    type_name = "flatten"
    start_dim: Int = Field(1, description="first dimension to flatten")
    end_dim: Int = Field(-1, description="last dimension to flatten")

    def build(self, x, ctx):
        for key in ("start_dim", "end_dim"):
            d = getattr(self, key)
            if not -x.dim() <= d < x.dim():
                raise ShapeError(key, f"is {d}, outside the {x.dim()} dimensions of the input {list(x.shape)}")
        return nn.Flatten(self.start_dim, self.end_dim)


class Reshape(Layer):
    """Reshapes each sample (the batch dimension is kept): shape [1, 8, 8] makes (N, 64) into (N, 1, 8, 8)."""

    type_name = "reshape"
    shape: IntList = Field(description="per-sample shape; one entry may be -1")

    def build(self, x, ctx):
        per = int(torch.tensor(x.shape[1:]).prod()) if x.dim() > 1 else 1
        known = [d for d in self.shape if d != -1]
        bad = [d for d in self.shape if d == 0 or d < -1]
        prod = int(torch.tensor(known).prod()) if known else 1
        if bad or self.shape.count(-1) > 1 or (-1 in self.shape and per % prod) or (-1 not in self.shape and prod != per):
            raise ShapeError("shape", f"{self.shape} does not hold the {per} values of each sample "
                                      f"(input {list(x.shape)})")
        return M.Reshape(self.shape)


class Permute(Layer):
    """Reorders dimensions, as torch.permute (dimension 0 is the batch)."""

    type_name = "permute"
    dims: IntList = Field(description="a permutation of the input's dimensions")

    def build(self, x, ctx):
        if sorted(d % x.dim() if -x.dim() <= d < x.dim() else d for d in self.dims) != list(range(x.dim())):
            raise ShapeError("dims", f"{self.dims} is not a permutation of the {x.dim()} dimensions of "
                                     f"{list(x.shape)}")
        return M.Permute(self.dims)


class Dropout(Layer):
    """Zeroes each value with probability p while training."""

    type_name = "dropout"
    p: Prob = Field(0.5, description="drop probability")

    def build(self, x, ctx):
        return nn.Dropout(self.p)


class _Activation(Layer):
    make: ClassVar[Any] = None

    def build(self, x, ctx):
        return type(self).make()


def _activation(name: str, cls: type[nn.Module], doc: str) -> type[Layer]:
    return type(name.title().replace("_", ""), (_Activation,),
                {"__doc__": doc, "type_name": name, "make": staticmethod(cls), "__module__": __name__})


Relu = _activation("relu", nn.ReLU, "max(0, x)")
Gelu = _activation("gelu", nn.GELU, "Gaussian error linear unit")
Tanh = _activation("tanh", nn.Tanh, "hyperbolic tangent")
Sigmoid = _activation("sigmoid", nn.Sigmoid, "logistic sigmoid")
Silu = _activation("silu", nn.SiLU, "x * sigmoid(x) (swish)")
Identity = _activation("identity", nn.Identity, "passes its input through")


class LeakyRelu(Layer):
    """max(0, x) + negative_slope * min(0, x)"""

    type_name = "leaky_relu"
    negative_slope: Float = Field(0.01, description="slope for negative inputs")

    def build(self, x, ctx):
        return nn.LeakyReLU(self.negative_slope)


class Elu(Layer):
    """exponential linear unit"""

    type_name = "elu"
    alpha: PosFloat = Field(1.0, description="saturation value for negative inputs")

    def build(self, x, ctx):
        return nn.ELU(self.alpha)


class _SoftmaxBase(Layer):
    dim: Int = Field(-1, description="the dimension that sums to one")

    def build(self, x, ctx):
        if not -x.dim() <= self.dim < x.dim():
            raise ShapeError("dim", f"is {self.dim}, outside the {x.dim()} dimensions of the input {list(x.shape)}")
        return (nn.Softmax if self.type_name == "softmax" else nn.LogSoftmax)(self.dim)


class Softmax(_SoftmaxBase):
    """softmax along dim"""

    type_name = "softmax"


class LogSoftmax(_SoftmaxBase):
    """log of softmax along dim"""

    type_name = "log_softmax"


# --- containers -------------------------------------------------------------------------------------

class Sequential(Node):
    """Child nodes applied in order."""

    type_name = "sequential"
    aliases = ("block",)
    container = True
    layers: list[Any] = Field(description="child nodes")


class Repeat(Node):
    """N copies of a block, named block-0 ... (name_format) or by names; each copy has its own parameters."""

    type_name = "repeat"
    container = True
    times: PosInt = Field(description="number of copies")
    block: Any = Field(description="the node to copy")
    names: Optional[Annotated[list[Annotated[str, Field(min_length=1, pattern=r"^[\w-]+$")]],
                              Expect("a list of names of letters, digits, _ and -")]] = Field(
        None, description="explicit names for the copies")
    name_format: Text = Field("block-{i}", description="copy names; {i} is the copy index")

    @field_validator("name_format")
    @classmethod
    def _has_index(cls, v):
        if "{i}" not in v:
            raise ValueError(f"must contain '{{i}}', got {v!r}")
        try:
            check_name(v.format(i=0))
        except (ValueError, KeyError, IndexError):
            raise ValueError(f"must give names of letters, digits, _ and - (with {{i}}), got {v!r}") from None
        return v

    def problems(self):
        if self.names is not None:
            if len(set(self.names)) != len(self.names):
                yield "names", "names must be unique"
            elif len(self.names) != self.times:
                yield "names", f"has {len(self.names)} names but times is {self.times}"

    def copy_names(self) -> list[str]:
        return list(self.names) if self.names else [self.name_format.format(i=i) for i in range(self.times)]


class Reuse(Node):
    """Uses an earlier sibling's module again: its parameters are shared."""

    type_name = "reuse"
    container = True
    layer: Name = Field(description="name of an earlier sibling")


class Residual(Node):
    """activation(body(x) + x); with projection, x is first mapped to the body's output shape."""

    type_name = "residual"
    container = True
    layers: list[Any] = Field(description="the body's nodes")
    projection: bool = Field(False, description="add a learned projection of x (linear, or strided 1x1 conv) "
                                                "when the body changes its shape")
    activation: Activation = Field(None, description="applied after the sum")


class Module(Node):
    """Any nn.Module class or factory by dotted path, built with Hydra's instantiate; the other keys
    are its arguments. Names inside it come from its own module tree."""

    type_name = "module"
    container = False
    model_config = {**Node.model_config, "extra": "allow"}
    target: Text = Field(alias="_target_", description="dotted path of the class or factory, e.g. torch.nn.Conv2d")

    def arguments(self) -> dict:
        return {k: v for k, v in (self.model_extra or {}).items()}


NODE_TYPES: dict[str, type[Node]] = {}
for _cls in (Linear, Conv1d, Conv2d, MaxPool, AvgPool, AdaptiveAvgPool, BatchNorm, GroupNorm, LayerNorm, RMSNorm,
             Embedding, PosEmbedding, Attention, TransformerBlock, Flatten, Reshape, Permute, Dropout, Relu, Gelu,
             Tanh, Sigmoid, Silu, LeakyRelu, Elu, Softmax, LogSoftmax, Identity, Sequential, Repeat, Reuse,
             Residual, Module):
    NODE_TYPES[_cls.type_name] = _cls
ALIASES = {alias: cls.type_name for cls in NODE_TYPES.values() for alias in cls.aliases}

#: torch module classes -> the node type name rules and reports use for them (most specific first)
MODULE_TYPES: list[tuple[type[nn.Module], str]] = [
    (M.TransformerBlock, "transformer_block"), (M.Attention, "attention"), (M.PositionalEmbedding, "pos_embedding"),
    (M.MLP, "mlp"), (M.Residual, "residual"), (M.Reshape, "reshape"), (M.Permute, "permute"),
    (nn.Linear, "linear"), (nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d"),
    (nn.MaxPool1d, "maxpool"), (nn.MaxPool2d, "maxpool"), (nn.AvgPool1d, "avgpool"), (nn.AvgPool2d, "avgpool"),
    (nn.AdaptiveAvgPool1d, "adaptive_avgpool"), (nn.AdaptiveAvgPool2d, "adaptive_avgpool"),
    (nn.BatchNorm1d, "batchnorm"), (nn.BatchNorm2d, "batchnorm"), (nn.GroupNorm, "groupnorm"),
    (nn.LayerNorm, "layernorm"), (nn.RMSNorm, "rmsnorm"), (nn.Embedding, "embedding"), (nn.Flatten, "flatten"),
    (nn.Dropout, "dropout"), (nn.ReLU, "relu"), (nn.GELU, "gelu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"),
    (nn.SiLU, "silu"), (nn.LeakyReLU, "leaky_relu"), (nn.ELU, "elu"), (nn.Softmax, "softmax"),
    (nn.LogSoftmax, "log_softmax"), (nn.Identity, "identity"), (nn.Sequential, "sequential"),
]


def module_type(module: nn.Module) -> str:
    """The node type name of a torch module (its class name when no node type builds it)."""
    for cls, name in MODULE_TYPES:
        if isinstance(module, cls):
            return name
    return type(module).__name__


def canonical_type(t: str) -> str:
    return ALIASES.get(t, t)


def all_type_names() -> list[str]:
    return [*NODE_TYPES, *ALIASES]


def is_relu(module: nn.Module) -> bool:
    """Whether the module's output is a ReLU's (so a 'dead' share of it means something)."""
    return isinstance(module, nn.ReLU) or getattr(module, "activation", None) == "relu"
