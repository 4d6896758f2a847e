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

import torch

SMALL = 1024  # tensors with at most this many elements share the packed buffer


class Moments:
    """Per-tensor moments, as vectors in the reducer's ``order``."""

    def __init__(self, r: "Reducer", mean: torch.Tensor, ss: torch.Tensor,
                 lo: torch.Tensor | None, hi: torch.Tensor | None):
        self.r = r
        self.mean = mean
        self.ss = ss        # sum of squared deviations from the mean
        self.lo = lo        # min and max: None when no statistic needs them
        self.hi = hi
        self._norm: torch.Tensor | None = None

    def stat(self, name: str) -> torch.Tensor:
        if name == "mean":
            return self.mean
        if name == "std":  # unbiased, as torch.std; 0 for a single element
            return (self.ss / self.r.dof).sqrt()
        if name == "norm":
            return self.norm()
        if name == "min":
            return self.lo
        if name == "max":
            return self.hi
        if name == "maxabs":
            return torch.maximum(self.hi, -self.lo)
        raise ValueError(f"unknown statistic {name!r}")

    def norm(self) -> torch.Tensor:
        if self._norm is None:
            self._norm = (self.ss + self.r.n * self.mean.square()).sqrt()
        return self._norm


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a flat float32 vector (callers run under ``torch.no_grad()``)."""
    t = t.reshape(-1)
    return t if t.dtype == torch.float32 else t.float()


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class Reducer:
    """Reduces a fixed list of tensor sizes. Results come in ``order``: the small tensors (in
    input order), then the large ones."""

    def __init__(self, names: list[str], numels: list[int], device: torch.device | str = "cpu",
                 sample_index: list[torch.Tensor] | None = None):
        self.small = [i for i, n in enumerate(numels) if n <= SMALL]
        self.large = [i for i, n in enumerate(numels) if n > SMALL]
        self.order = self.small + self.large
        self.names = [names[i] for i in self.order]
        self.keys: dict = {}  # metric keys built once per (prefix, statistics), for the caller
        sizes = torch.tensor([numels[i] for i in self.small], dtype=torch.long)
        offsets = [0, *torch.cumsum(sizes, 0).tolist()]
        self.ids = torch.repeat_interleave(torch.arange(len(self.small)), sizes).to(device)
        self.n = torch.tensor([float(numels[i]) for i in self.order], device=device)
        self.n_small = self.n[: len(self.small)]
        self.dof = (self.n - 1).clamp_min(1)
        # histogram samples: flat positions per tensor; the small ones as one gather from the pack
        self.sample_index = [ix.to(device) for ix in sample_index] if sample_index is not None else None
        self.sample_sizes: list[tuple[int, int]] = []
        self.pick = None
        if sample_index is not None:
            if self.small:
                self.pick = torch.cat([sample_index[i] + offsets[j] for j, i in enumerate(self.small)]).to(device)
            self.sample_sizes = [(names[i], len(sample_index[i])) for i in self.order]

    def pack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The small tensors, flattened into one new buffer (also a snapshot of their values)."""
        if not self.small:
            return self.n.new_zeros(0)
        return torch.cat([_flat(tensors[i]) for i in self.small])

    def moments(self, tensors: list[torch.Tensor], packed: torch.Tensor, extremes: bool) -> Moments:
        """Mean and centred sum of squares of every tensor; min and max too if ``extremes``."""
        means, sss, los, his = [], [], [], []
        if self.small:
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
            means.append(torch.stack(cols[0]))
            sss.append(torch.stack(cols[1]))
            if extremes:
                los.append(torch.stack(cols[2]))
                his.append(torch.stack(cols[3]))
        return Moments(self, _join(means), _join(sss), _join(los) if extremes else None,
                       _join(his) if extremes else None)

    def distance(self, tensors: list[torch.Tensor], packed: torch.Tensor, before: tuple[torch.Tensor, list]) -> torch.Tensor:
        """Per-tensor L2 distance to a ``snapshot`` taken earlier, in ``order``."""
        packed_before, large_before = before
        parts = []
        if self.small:
            d = packed - packed_before
            parts.append(packed.new_zeros(len(self.small)).index_add_(0, self.ids, d * d).sqrt())
        if self.large:
            parts.append(torch.stack([torch.linalg.vector_norm(_flat(tensors[i]) - b)
                                      for i, b in zip(self.large, large_before)]))
        return _join(parts)

    def snapshot(self, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.pack(tensors), [_flat(tensors[i]).clone() for i in self.large]

    def samples(self, tensors: list[torch.Tensor], packed: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's sampled values, concatenated in ``order`` (``sample_sizes``: name, size):
        one gather for all the small tensors, one per large tensor."""
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
