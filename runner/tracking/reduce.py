"""Summary statistics of many tensors at once, in a handful of device operations.

A logging step reduces every parameter and every gradient. Done one tensor at a time, that is a
dozen small kernels per tensor, and for small tensors (biases, norm scales, the chapter's 4x4
layers) the launch, not the arithmetic, is the cost. So small tensors are copied into one flat
buffer and reduced per segment (``index_add_`` / ``scatter_reduce_``): a few operations for all
of them together. Large tensors are reduced one by one, where the arithmetic dominates.

Every statistic derives from four moments per tensor: the mean, the centred sum of squares
(two passes: the one-pass sum-of-squares formula loses the std of a tensor whose mean is large
next to its spread), the min and the max.
"""
from __future__ import annotations

import numpy as np
import torch

SMALL = 1024  # tensors with at most this many elements share the packed buffer


class Moments:
    """Per-tensor moments, as vectors in the reducer's ``order``: torch tensors on the device, or
    numpy arrays when the reducer works on the host (CPU training)."""

    def __init__(self, r, mean, ss, lo, hi):
        self.r = r
        self.mean = mean
        self.ss = ss        # sum of squared deviations from the mean
        self.lo = lo        # min and max: None when no statistic needs them
        self.hi = hi
        self._norm = None
        self.xp = np if isinstance(mean, np.ndarray) else torch

    def stat(self, name: str):
        xp = self.xp
        if name == "mean":
            return self.mean
        if name == "std":  # unbiased, as torch.std; 0 for a single element
            return xp.sqrt(self.ss / self.r.dof_of(xp))
        if name == "norm":
            return self.norm()
        if name == "min":
            return self.lo
        if name == "max":
            return self.hi
        if name == "maxabs":
            return xp.maximum(self.hi, -self.lo)
        raise ValueError(f"unknown statistic {name!r}")

    def norm(self):
        if self._norm is None:
            self._norm = self.xp.sqrt(self.ss + self.r.n_of(self.xp) * self.mean * self.mean)
        return self._norm


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a flat float32 vector (callers run under ``torch.no_grad()``)."""
    if t.dim() != 1:
        t = t.reshape(-1)
    return t if t.dtype == torch.float32 else t.float()


def _join(parts: list):
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else torch.cat(parts)


class Reducer:
    """Reduces a fixed list of tensor sizes. Results come in ``order``: the small tensors (in
    input order), then the large ones.

    On the CPU the results are numpy arrays: the small tensors' packed buffer is viewed as an
    array (no copy) and reduced per segment with numpy's ``reduceat``, a handful of calls that
    each cost less than one torch operator's dispatch; the large tensors are reduced by torch and
    their few results viewed the same way. On a GPU everything stays on the device, in torch.
    """

    def __init__(self, names: list[str], numels: list[int], device: torch.device | str = "cpu",
                 sample_index: list[torch.Tensor] | None = None):
        device = torch.device(device)
        self.host = device.type == "cpu"
        self.small = [i for i, n in enumerate(numels) if n <= SMALL]
        self.large = [i for i, n in enumerate(numels) if n > SMALL]
        self.order = self.small + self.large
        self.names = [names[i] for i in self.order]
        self.keys: dict = {}  # metric keys built once per (prefix, statistics), for the caller
        sizes = [numels[i] for i in self.small]
        offsets = [0, *np.cumsum(sizes, dtype=np.int64).tolist()]
        self.starts = np.asarray(offsets[:-1], dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.ids = torch.repeat_interleave(torch.arange(len(self.small)),
                                           torch.tensor(sizes, dtype=torch.long)).to(device)
        self.n = torch.tensor([float(numels[i]) for i in self.order], device=device)
        self.n_small = self.n[: len(self.small)]
        self.dof = (self.n - 1).clamp_min(1)
        self._n_np = np.asarray([float(numels[i]) for i in self.order])
        self._dof_np = np.maximum(self._n_np - 1, 1)
        # histogram samples: flat positions per tensor; the small ones as one gather from the pack
        self.sample_index = [ix.to(device) for ix in sample_index] if sample_index is not None else None
        self.sample_sizes: list[tuple[int, int]] = []
        self.pick = None
        if sample_index is not None:
            if self.small:
                self.pick = torch.cat([sample_index[i] + offsets[j] for j, i in enumerate(self.small)]).to(device)
                self._pick_np = self.pick.cpu().numpy()
            self.sample_sizes = [(names[i], len(sample_index[i])) for i in self.order]

    def n_of(self, xp):
        return self._n_np if xp is np else self.n

    def dof_of(self, xp):
        return self._dof_np if xp is np else self.dof

    def pack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The small tensors, flattened into one new buffer (also a snapshot of their values)."""
        if not self.small:
            return self.n.new_zeros(0)
        return torch.cat([_flat(tensors[i]) for i in self.small])

    def moments(self, tensors: list[torch.Tensor], packed: torch.Tensor, extremes: bool) -> Moments:
        """Mean and centred sum of squares of every tensor; min and max too if ``extremes``."""
        means, sss, los, his = [], [], [], []
        if self.small:
            if self.host:
                a = packed.numpy().astype(np.float64)
                mean = np.add.reduceat(a, self.starts) / self.sizes
                dev = a - np.repeat(mean, self.sizes)
                means.append(mean)
                sss.append(np.add.reduceat(dev * dev, self.starts))
                if extremes:
                    los.append(np.minimum.reduceat(a, self.starts))
                    his.append(np.maximum.reduceat(a, self.starts))
            else:
                k = len(self.small)
                mean = packed.new_zeros(k).index_add_(0, self.ids, packed) / self.n_small
                dev = packed - mean[self.ids]
                means.append(mean)
                sss.append(packed.new_zeros(k).index_add_(0, self.ids, dev * dev))
                if extremes:
                    los.append(packed.new_empty(k).scatter_reduce_(0, self.ids, packed, "amin", include_self=False))
                    his.append(packed.new_empty(k).scatter_reduce_(0, self.ids, packed, "amax", include_self=False))
        if self.large:
            cols: list[list[torch.Tensor]] = [[], [], [], []]
            for i in self.large:
                t = _flat(tensors[i])
                mean = t.mean()
                cols[0].append(mean)
                cols[1].append(torch.linalg.vector_norm(t - mean).square())
                if extremes:
                    lo, hi = torch.aminmax(t)
                    cols[2].append(lo)
                    cols[3].append(hi)
            for out, col in zip((means, sss, los, his), cols if extremes else cols[:2]):
                v = torch.stack(col)
                out.append(v.double().numpy() if self.host else v)
        return Moments(self, _join(means), _join(sss), _join(los) if extremes else None,
                       _join(his) if extremes else None)

    def distance(self, tensors: list[torch.Tensor], packed: torch.Tensor, before: tuple):
        """Per-tensor L2 distance to a ``snapshot`` taken earlier, in ``order``."""
        packed_before, large_before = before
        parts = []
        if self.small:
            if self.host:
                d = packed.numpy().astype(np.float64) - packed_before.numpy()
                parts.append(np.sqrt(np.add.reduceat(d * d, self.starts)))
            else:
                d = packed - packed_before
                parts.append(packed.new_zeros(len(self.small)).index_add_(0, self.ids, d * d).sqrt())
        if self.large:
            v = torch.stack([torch.linalg.vector_norm(_flat(tensors[i]) - b) for i, b in zip(self.large, large_before)])
            parts.append(v.double().numpy() if self.host else v)
        return _join(parts)

    def snapshot(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.pack(tensors), [_flat(tensors[i]).clone() for i in self.large]

    def samples(self, tensors: list[torch.Tensor], packed: torch.Tensor) -> list:
        """Each tensor's sampled values, concatenated in ``order`` (``sample_sizes``: name, size):
        one gather for all the small tensors, one per large tensor."""
        if self.host:
            out = [packed.numpy()[self._pick_np]] if self.pick is not None else []
            return out + [_flat(tensors[i])[self.sample_index[i]].numpy() for i in self.large]
        out = [packed[self.pick]] if self.pick is not None else []
        return out + [_flat(tensors[i])[self.sample_index[i]] for i in self.large]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class ShardedReducer:
    """The :class:`Reducer` interface for tensors sharded across processes (FSDP2): each process
    reduces its own shard and a handful of all-reduces combine them, so no full tensor is ever
    gathered. Every process must call it at the same steps. Results come in input ``order``."""

    def __init__(self, names: list[str], tensors: list[torch.Tensor], strategy, device,
                 sample_index: list[torch.Tensor] | None = None):
        self.strategy = strategy
        self.order = list(range(len(names)))
        self.names = list(names)
        self.keys: dict = {}
        numels = [t.numel() for t in tensors]  # the whole tensors' sizes
        self.n = torch.tensor([float(n) for n in numels], device=device)
        self.dof = (self.n - 1).clamp_min(1)
        local = [_local(t).numel() for t in tensors]
        offsets = strategy.gather(local)  # flat offset of each rank's shard: shards are row blocks
        start = [sum(r[i] for r in offsets[:strategy.rank]) for i in range(len(tensors))]
        self.sample_sizes: list[tuple[str, int]] = []
        self.sample_local: list[torch.Tensor] | None = None
        if sample_index is not None:
            self.sample_sizes = [(n, len(ix)) for n, ix in zip(names, sample_index)]
            self.sample_local = [(ix[(ix >= s) & (ix < s + m)] - s).to(device)
                                 for ix, s, m in zip(sample_index, start, local)]

    def n_of(self, xp):
        return self.n

    def dof_of(self, xp):
        return self.dof

    def pack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.n.new_zeros(0)

    def moments(self, tensors: list[torch.Tensor], packed: torch.Tensor, extremes: bool) -> Moments:
        import torch.distributed as dist

        flats = [_flat(_local(t)) for t in tensors]
        sums = self.strategy.reduce_sum_(torch.stack([f.sum() for f in flats]))
        mean = sums / self.n
        ss = self.strategy.reduce_sum_(torch.stack([(f - m).square().sum() for f, m in zip(flats, mean)]))
        lo = hi = None
        if extremes:
            inf = torch.tensor(float("inf"), device=self.n.device)
            lo = torch.stack([f.min() if f.numel() else inf for f in flats])
            hi = torch.stack([f.max() if f.numel() else -inf for f in flats])
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return Moments(self, mean, ss, lo, hi)

    def snapshot(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.n.new_zeros(0), [_flat(_local(t)).clone() for t in tensors]

    def distance(self, tensors, packed, before) -> torch.Tensor:
        d = torch.stack([(_flat(_local(t)) - b).square().sum() for t, b in zip(tensors, before[1])])
        return self.strategy.reduce_sum_(d).sqrt()

    def samples(self, tensors: list[torch.Tensor], packed: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's sampled values in order: every rank contributes those in its shard."""
        mine = [_flat(_local(t))[ix].cpu() for t, ix in zip(tensors, self.sample_local)]
        every = self.strategy.gather(mine)
        return [torch.cat([rank[i] for rank in every]).to(self.n.device) for i in range(len(tensors))]
