"""What the training loop asks of a dataset, and the in-memory kind most datasets are."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


class Dataset:
    """A train part served in seeded batches, and a validation part.

    ``task`` is ``regression``, ``classification`` or ``lm`` (next-token prediction: targets are
    token ids at every position); ``num_classes`` is the number of classes or the vocabulary size.
    """

    task: str
    batch_size: int
    num_classes: int
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(batch index, x, y) for one epoch, from batch ``start`` on."""
        raise NotImplementedError

    def sample(self) -> torch.Tensor:
        """A batch of training inputs, used to infer every layer's shape."""
        return next(iter(self.batches(0)))[1]

    def out_features(self) -> int | None:
        """The size a model's last layer should have (for ``out: auto``)."""
        if self.task in ("classification", "lm"):
            return self.num_classes
        y = self.y_val if len(self.y_val) else next(iter(self.batches(0)))[2]
        return int(y.shape[-1]) if y.dim() > 1 else 1

    def context(self):
        from runner.model.layers import BuildContext

        return BuildContext(out_features=self.out_features(), vocab=self.num_classes if self.task == "lm" else None,
                            task=self.task)

    def baselines(self) -> dict[str, float]:
        """Reference values a trained model should beat (e.g. ``val/unigram_loss``)."""
        return {}


@dataclass
class TensorDataset(Dataset):
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: str
    batch_size: int
    shuffle: bool
    seed: int
    num_classes: int = 0

    def sample(self) -> torch.Tensor:
        return self.x_train[: self.batch_size]

    @property
    def batches_per_epoch(self) -> int:
        return max(1, -(-len(self.x_train) // self.batch_size))

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.x_train))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.x_train), generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        idx = self.order(epoch)
        for b in range(start, self.batches_per_epoch):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield b, self.x_train[sel], self.y_train[sel]
