"""Optimizer, learning-rate schedule and loss from the ``train`` config."""
from __future__ import annotations

import torch
from torch import nn

from runner.errors import UserError


def make_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg["optimizer"]]
    try:
        return cls(params, lr=cfg["lr"], **(cfg.get("optimizer_args") or {}))
    except TypeError as e:
        raise UserError(f"train.optimizer_args: {cfg['optimizer']} does not accept these arguments: {e}") from None


def make_schedule(opt: torch.optim.Optimizer, cfg: dict, total_steps: int):
    name = cfg.get("schedule")
    args = dict(cfg.get("schedule_args") or {})
    if name is None:
        return None
    try:
        if name == "step":
            return torch.optim.lr_scheduler.StepLR(opt, **{"step_size": max(1, total_steps // 3), **args})
        if name == "exponential":
            return torch.optim.lr_scheduler.ExponentialLR(opt, **{"gamma": 0.99, **args})
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, **{"T_max": max(1, total_steps), **args})
    except TypeError as e:
        raise UserError(f"train.schedule_args: the {name} schedule does not accept these arguments: {e}") from None


def make_loss(cfg: dict, task: str) -> nn.Module:
    name = cfg.get("loss", "auto")
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if name == "cross_entropy" and task != "classification":
        raise UserError("train.loss: cross_entropy needs class labels, but the data is a regression task")
    return {"mse": nn.MSELoss(), "l1": nn.L1Loss(), "cross_entropy": nn.CrossEntropyLoss()}[name]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)
