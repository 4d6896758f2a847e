"""Per-layer statistics, computed on the device on logging steps only, fetched in one transfer.

One entry per distinct tensor (a tie group is one entry, under its canonical name). Metric keys
are ``<statistic>/<name>`` so that the MLflow UI, which groups charts by the key up to its last
``/``, shows one section per statistic with one chart per parameter:

- ``weight_mean|weight_std|weight_min|weight_max|weight_norm/<param>`` (by default std and norm)
- ``grad_mean|grad_std|grad_maxabs|grad_norm/<param>`` (by default norm and maxabs)
- ``update_ratio/<param>``: ||w_after - w_before|| / ||w_after|| for the logged step
- ``act_mean|act_std|act_dead/<layer>`` with ``tracking.activations: true`` (``act_dead``: the
  fraction of outputs <= 0 of ReLU layers)
- ``train/loss``, ``train/grad_norm`` (global), ``train/lr`` (``train/lr_group<i>`` for more groups)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from runner.model.layers import is_relu
from runner.model.network import Network
from runner.tracking.config import TrackingConfig
from runner.tracking.reduce import Reducer, ShardedReducer, _local

EXTREMES = {"min", "max", "maxabs"}
SPREAD = {"std", "min", "max"}  # statistics left out for single-value tensors


@dataclass
class LoggedStep:
    """What one logging step produced: metric values, and the histogram samples of every tensor
    as one host tensor laid out by ``layout`` (key, size), keys "weight/<p>" and "grad/<p>"."""

    step: int
    metrics: dict[str, float]
    samples: torch.Tensor | None = None
    layout: list[tuple[str, int]] = field(default_factory=list)

    def sample_series(self) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for key, size in self.layout:
            out[key] = self.samples[offset:offset + size]
            offset += size
        return out


def lr_key(group: int) -> str:
    """The metric key of a parameter group's learning rate."""
    return "train/lr" if group == 0 else f"train/lr_group{group}"


def to_host(parts: list, dtype=np.float64) -> np.ndarray:
    """One flat host array of ``parts`` (numpy arrays, and device tensors fetched in one copy)."""
    tensors = [p.reshape(-1).float() for p in parts if isinstance(p, torch.Tensor)]
    fetched = torch.cat(tensors).cpu().numpy() if tensors else None
    out, at = [], 0
    for p in parts:
        if isinstance(p, torch.Tensor):
            n = p.numel()
            out.append(fetched[at:at + n])
            at += n
        else:
            out.append(np.asarray(p).reshape(-1))
    return np.concatenate(out).astype(dtype, copy=False) if out else np.zeros(0, dtype)


class StatsCollector:
    """Computes the configured statistics for a network at logging steps."""

    def __init__(self, net: Network, cfg, seed: int = 0, strategy=None):
        cfg = TrackingConfig.of(cfg, "tracking")
        self.net = net
        self.strategy = strategy
        self.every = cfg.every_n_steps
        self.weight_stats = tuple(cfg.stats.weights)
        self.grad_stats = tuple(cfg.stats.grads)
        self.update_ratio = cfg.stats.update_ratio
        params = net.params()
        self.names, self.tensors = list(params), list(params.values())
        self.flat = self.tensors
        self._all = tuple(range(len(self.tensors)))
        self.sample_size = cfg.histograms.sample if cfg.histograms.enabled else 0
        g = torch.Generator().manual_seed(seed)
        self.sample_idx = [
            torch.randperm(p.numel(), generator=g)[: self.sample_size].sort().values if p.numel() > self.sample_size
            else torch.arange(p.numel())
            for p in self.tensors
        ] if self.sample_size else None
        self._reducers: dict[tuple[int, ...], Reducer] = {}  # by the positions reduced together
        self._pending: list[torch.Tensor] = []      # one scalar per key
        self._keys: list[str] = []
        self._samples: list[tuple[str, int]] = []   # histogram samples: (key, size), after the scalars
        self._sample_tensors: list[torch.Tensor] = []
        self._host: dict[str, float] = {}           # values already on the host (loss, grad norm)
        self._before: tuple | None = None
        self._hooks: list = []
        self._act_keys = 0       # activation statistics per logging step
        self._calls: dict[int, int] = {}
        self._act_on = False
        if cfg.activations:
            self._install_activation_hooks()

    # cadence ---------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether global step ``step`` (1-based) is a logging step."""
        return step % self.every == 0 or step == 1

    def to(self, device: torch.device) -> None:
        """Training is about to start: take the parameters as placed (FSDP replaces them with
        sharded ones); reducers are rebuilt on their device at the next logging step."""
        params = self.net.params()
        self.tensors = [params[n] for n in self.names]
        # flat float32 views of the parameters, made once: they follow the in-place updates
        self.flat = [t.detach().view(-1) if t.is_contiguous() and t.dtype == torch.float32 and not hasattr(t, "to_local")
                     else t for t in self.tensors]
        self._reducers = {}

    def _reducer(self, present: tuple[int, ...]) -> Reducer:
        r = self._reducers.get(present)
        if r is None:
            names = [self.names[i] for i in present]
            samples = [self.sample_idx[i] for i in present] if self.sample_idx else None
            device = _local(self.tensors[present[0]]).device
            if self.strategy is not None and self.strategy.sharded():
                r = ShardedReducer(names, [self.tensors[i] for i in present], self.strategy, device, samples)
            else:
                r = Reducer(names, [self.tensors[i].numel() for i in present], device, samples)
            self._reducers[present] = r
        return r

    # activations -----------------------------------------------------------------------------
    def _install_activation_hooks(self) -> None:
        """One hook per module; a module used several times (a reused layer) names each call by
        the use it is, in model order, so every use gets its own statistics."""
        uses: dict[int, list[str]] = {}
        modules: dict[int, nn.Module] = {}
        for name in self.net.leaf_modules():
            m = self.net.module(name)
            uses.setdefault(id(m), []).append(name)
            modules[id(m)] = m
        for key, names in uses.items():
            relu = is_relu(modules[key])
            self._hooks.append(modules[key].register_forward_hook(self._make_hook(key, names, relu)))
            self._act_keys += len(names) * (2 + relu)

    def _make_hook(self, key: int, names: list[str], relu: bool):
        def hook(module, inputs, output):
            if not self._act_on or not isinstance(output, torch.Tensor):
                return
            k = self._calls.get(key, 0)
            self._calls[key] = k + 1
            name = names[k] if k < len(names) else f"{names[-1]}#{k}"
            out = output.detach().float()
            self._add(f"act_mean/{name}", out.mean())
            self._add(f"act_std/{name}", out.std() if out.numel() > 1 else out.new_zeros(()))
            if relu:
                self._add(f"act_dead/{name}", (out <= 0).float().mean())
        return hook

    def activations(self, on: bool) -> None:
        self._act_on = on
        self._calls = {}

    # collection ------------------------------------------------------------------------------
    def _add(self, key: str, value: torch.Tensor) -> None:
        self._keys.append(key)
        self._pending.append(value.reshape(1))

    def _add_block(self, prefix: str, which: tuple[str, ...], values: list[torch.Tensor], r: Reducer) -> None:
        """One stacked vector of statistics ``which`` x the reducer's tensors, under keys
        ``<prefix><stat>/<name>`` (built once per reducer)."""
        cached = r.keys.get((prefix, which))
        if cached is None:  # the spread of a single value means nothing: no std, min or max for it
            single = {n for n, size in zip(r.names, r.n.tolist()) if size == 1}
            pairs = [(j, f"{prefix}{s}/{n}") for j, (s, n) in enumerate((s, n) for s in which for n in r.names)
                     if not (n in single and s in SPREAD)]
            keep = [j for j, _ in pairs]
            whole = len(keep) == len(which) * len(r.names)
            cached = r.keys[(prefix, which)] = ([k for _, k in pairs], None if whole else keep)
        keys, keep = cached
        self._keys.extend(keys)
        stack = np.stack if isinstance(values[0], np.ndarray) else torch.stack
        block = stack(values).reshape(-1) if len(values) > 1 else values[0]
        if keep is not None and isinstance(block, np.ndarray):
            block = block[keep]
        elif keep is not None:  # the index tensor is made once per device, not at every logging step
            index = r.keys.get((prefix, which, block.device))
            if index is None:
                index = r.keys[(prefix, which, block.device)] = torch.tensor(keep, device=block.device)
            block = block[index]
        self._pending.append(block)

    def _add_samples(self, kind: str, r: Reducer, tensors: list[torch.Tensor], packed: torch.Tensor) -> None:
        if self.sample_size:
            self._sample_tensors.extend(r.samples(tensors, packed))
            keys = r.keys.get(kind)
            if keys is None:
                keys = r.keys[kind] = [(f"{kind}/{name}", size) for name, size in r.sample_sizes]
            self._samples.extend(keys)

    def _value(self, key: str, value) -> None:
        """A scalar the caller has: on the device (fetched with everything else) or the host."""
        if isinstance(value, torch.Tensor):
            self._add(key, value.detach().float())
        else:
            self._host[key] = float(value)

    @torch.no_grad()
    def before_step(self, grad_norm=None) -> None:
        """Gradient statistics; call after backward (and clipping), before ``optimizer.step()``.
        ``grad_norm``: the global gradient norm when the caller has it (clipping computes it
        before clipping), as a tensor or a number; otherwise it is computed here, from the
        per-tensor norms."""
        if grad_norm is not None:
            self._value("train/grad_norm", grad_norm)
        present = tuple(i for i, p in enumerate(self.tensors) if p.grad is not None)
        if present:
            r = self._reducer(present)
            grads = [self.tensors[i].grad for i in present]
            packed = r.pack(grads)
            if self.grad_stats or grad_norm is None:
                m = r.moments(grads, packed, extremes=bool(EXTREMES & set(self.grad_stats)))
                if self.grad_stats:
                    self._add_block("grad_", self.grad_stats, [m.stat(s) for s in self.grad_stats], r)
                if grad_norm is None:
                    norm = m.norm()
                    total = (norm * norm).sum() ** 0.5
                    self._keys.append("train/grad_norm")
                    self._pending.append(total.reshape(1))
            self._add_samples("grad", r, grads, packed)
        elif grad_norm is None:
            self._host["train/grad_norm"] = 0.0
        if self.update_ratio:
            self._before = self._reducer(self._all).snapshot(self.flat)

    @torch.no_grad()
    def after_step(self, step: int, loss, lrs: list[float]) -> LoggedStep:
        """Weight statistics and update ratios; then everything goes to the host in one copy."""
        self._value("train/loss", loss)
        r = self._reducer(self._all)
        packed = r.pack(self.flat)
        if self.weight_stats or self._before is not None:
            m = r.moments(self.flat, packed, extremes=bool(EXTREMES & set(self.weight_stats)))
            if self.weight_stats:
                self._add_block("weight_", self.weight_stats, [m.stat(s) for s in self.weight_stats], r)
            if self._before is not None:
                norm = m.norm()
                ratio = r.distance(self.flat, packed, self._before) / (
                    np.maximum(norm, 1e-12) if isinstance(norm, np.ndarray) else norm.clamp_min(1e-12))
                self._add_block("update_ratio", ("",), [ratio], r)
        self._add_samples("weight", r, self.flat, packed)
        self._before = None
        # the one host transfer: every scalar, then every histogram sample
        fetched = to_host(self._pending + self._sample_tensors)
        n = len(self._keys)  # one key per scalar in _pending; the samples follow
        metrics = {**self._host, **dict(zip(self._keys, fetched[:n].tolist()))}
        for i, lr in enumerate(lrs):
            metrics[lr_key(i)] = lr
        samples = torch.from_numpy(fetched[n:].astype(np.float32)) if self._samples else None
        logged = LoggedStep(step, metrics, samples, self._samples)
        self._pending, self._keys, self._samples, self._sample_tensors, self._host = [], [], [], [], {}
        return logged

    def keys_per_step(self) -> int:
        """How many metric keys one logging step writes (for the key budget)."""
        n = len(self.tensors)
        single = sum(1 for t in self.tensors if t.numel() == 1)
        spread = len(SPREAD & set(self.weight_stats)) + len(SPREAD & set(self.grad_stats))
        keys = n * (len(self.weight_stats) + len(self.grad_stats) + int(self.update_ratio)) - single * spread + 3
        keys += self._act_keys  # act_mean, act_std per use; act_dead for ReLU outputs
        return keys

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
