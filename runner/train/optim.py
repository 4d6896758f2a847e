"""Optimizer, learning-rate schedule and loss from the ``train`` config."""
from __future__ import annotations

import torch
from torch import nn

from runner.errors import UserError


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer, fused when its tensors allow (on an accelerator, fused steps skip a
    non-finite step on the device; ``optimizer_args`` may set ``fused`` or ``foreach`` to choose
    otherwise)."""
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    params, args = list(params), dict(cfg.optimizer_args)
    if "fused" not in args and "foreach" not in args and not any(hasattr(p, "to_local") for p in params):
        try:
            return cls(params, lr=cfg.lr, fused=True, **args)
        except (RuntimeError, ValueError):  # a device or dtype the fused kernels do not cover
            pass
    return cls(params, lr=cfg.lr, **args)


def make_schedule(opt: torch.optim.Optimizer, cfg, total_steps: int):
    name, args = cfg.schedule, dict(cfg.schedule_args)
    if name is None:
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, **{"step_size": max(1, total_steps // 3), **args})
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, **{"gamma": 0.99, **args})
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, **{"T_max": max(1, total_steps), **args})


class TokenCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy over every position of (N, T, V) logits against (N, T) token ids."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def make_loss(cfg, task: str) -> nn.Module:
    name = cfg.loss
    if name == "auto":
        name = "cross_entropy" if task in ("classification", "lm") else "mse"
    if name == "cross_entropy" and task == "regression":
        raise UserError("train.loss: cross_entropy needs class labels, but the data is a regression task")
    if name != "cross_entropy" and task in ("classification", "lm"):
        raise UserError(f"train.loss: {name} needs real-valued targets, but the data has class labels; "
                        "use cross_entropy (or auto)")
    if name == "cross_entropy":
        return TokenCrossEntropy() if task == "lm" else nn.CrossEntropyLoss()
    return {"mse": nn.MSELoss(), "l1": nn.L1Loss()}[name]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)
