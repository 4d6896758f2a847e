"""Custom initializers shipped as examples; name them in a rule by dotted path."""
from __future__ import annotations

import torch


def d2l_weird(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The reference chapter's custom distribution.

    w ~ U(5, 10) with probability 1/4, 0 with probability 1/2, U(-10, -5) with probability 1/4:
    draw U(-10, 10) and zero every value with |w| < 5.
    """
    data = torch.empty_like(t).uniform_(-10, 10, generator=g)
    return data * (data.abs() >= 5)
