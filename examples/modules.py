"""Modules of one's own, the way a user brings them to the runner.

``SqueezeExcite`` is used as one node of a config tree (``type: module``); ``TinyConvNet`` is a
whole model (``model._target_``). Nothing here knows about the runner: they are plain
``nn.Module`` classes, and the runner's names, init rules, ties, statistics and checkpoints work
on them through their own module tree.
"""
from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al., 2018): scale each channel of (N, C, H, W) by a gate learned
    from the channel means."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class TinyConvNet(nn.Module):
    """A whole model: 8x8 single-channel images (N, 8, 8) -> class logits."""

    def __init__(self, channels: int = 16, classes: int = 10, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.se = SqueezeExcite(2 * channels)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * channels * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.features(x.unsqueeze(1)))
        return self.head(self.dropout(x.flatten(1)))
