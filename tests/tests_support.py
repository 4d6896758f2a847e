"""Importable helpers that tests name by dotted path (as users name their own code in configs)."""
import torch


class ScaledOnes:
    """A class-style custom initializer: built with args, called with (tensor, generator)."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, t: torch.Tensor, g: torch.Generator) -> None:
        t.fill_(self.scale)


CALLS: list[tuple[int, ...]] = []


def counting_ones(t: torch.Tensor, g: torch.Generator) -> None:
    """Records each call, so tests can check how often init touched a tensor."""
    CALLS.append(tuple(t.shape))
    t.fill_(1.0)


class Raising(torch.nn.Module):
    """A user model whose constructor refuses its argument."""

    def __init__(self, width: int):
        raise ValueError(f"bad width {width}")


class NotAModule:
    def __init__(self, width: int):
        self.width = width


class WrongShape(torch.nn.Module):
    """A user model that cannot take the data it is given."""

    def __init__(self, width: int):
        super().__init__()
        self.lin = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.lin(x)


def raising_init(t: torch.Tensor, g: torch.Generator) -> None:
    """A custom initializer with a bug."""
    raise KeyError("no such scale")


def nan_init(t: torch.Tensor, g: torch.Generator) -> None:
    t.fill_(float("nan"))
