"""Batch normalisation whose batch statistics span every process, on gloo as on nccl.

torch's ``nn.SyncBatchNorm`` needs a GPU. Under data parallelism each process sees a share of
the global batch; normalising by the share's statistics would train a different model than one
process on the whole batch. This batch norm sums the shares' counts, sums and centred squares
with a differentiable all-reduce (so gradients flow through the global statistics exactly as
they would in one process), and updates the running statistics from the global batch, so every
process holds the same running statistics. It is swapped in place of ``nn.BatchNorm1d/2d``
(same parameters, buffers and names), so checkpoints do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


class _Synced:
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training and self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], device=x.device, dtype=torch.float32)
        first = _all_reduce(torch.cat([xf.sum(dims), count]))
        total = first[-1]
        mean = first[:-1] / total
        var = _all_reduce((xf - mean.view(shape)).square().sum(dims)) / total
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * total / (total - 1).clamp_min(1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


_SWAPS: dict[type, type] = {}


def sync_batchnorm(net: nn.Module) -> int:
    """Make every batch norm of ``net`` synchronise its statistics across processes (in place);
    returns how many were changed."""
    changed = 0
    for m in {id(m): m for m in net.modules()}.values():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, (_Synced, nn.SyncBatchNorm)):
            continue
        cls = type(m)
        m.__class__ = _SWAPS.setdefault(cls, type(cls.__name__, (_Synced, cls), {"__module__": cls.__module__}))
        changed += 1
    return changed
