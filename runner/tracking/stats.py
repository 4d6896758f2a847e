"""Per-layer statistics, computed on the device on logging steps only, fetched in one transfer.

One entry per distinct tensor (a tie group is one entry, under its canonical name). Metric keys
are ``<statistic>/<name>`` so that the MLflow UI, which groups charts by the key up to its last
``/``, shows one section per statistic with one chart per parameter:

- ``weight_mean|weight_std|weight_min|weight_max|weight_norm/<param>``
- ``grad_mean|grad_std|grad_maxabs|grad_norm/<param>``
- ``update_ratio/<param>``: ||w_after - w_before|| / ||w_after|| for the logged step
- ``act_mean|act_std|act_dead/<layer>`` with ``tracking.activations: true`` (``act_dead``: the
  fraction of outputs <= 0 of ReLU layers)
- ``train/loss``, ``train/grad_norm`` (global), ``train/lr`` (``train/lr_group<i>`` for more groups)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from runner.model.build import Network
from runner.model.layers import Dense

WEIGHT_STATS = ("mean", "std", "min", "max", "norm")
GRAD_STATS = ("mean", "std", "maxabs", "norm")


def _stats(t: torch.Tensor, which: tuple[str, ...]) -> list[torch.Tensor]:
    t = t.detach().float().reshape(-1)
    out = []
    for s in which:
        if s == "mean":
            out.append(t.mean())
        elif s == "std":
            out.append(t.std() if t.numel() > 1 else torch.zeros((), device=t.device))
        elif s == "min":
            out.append(t.min())
        elif s == "max":
            out.append(t.max())
        elif s == "maxabs":
            out.append(t.abs().max())
        else:
            out.append(torch.linalg.vector_norm(t))
    return out


@dataclass
class LoggedStep:
    """What one logging step produced, as plain Python values."""

    step: int
    metrics: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)  # "weight/<p>", "grad/<p>" -> values


class StatsCollector:
    """Computes the configured statistics for a network at logging steps."""

    def __init__(self, net: Network, cfg: dict, seed: int = 0):
        self.net = net
        self.every = int(cfg.get("every_n_steps", 10))
        stats = cfg.get("stats") or {}
        self.weight_stats = tuple(stats.get("weights", WEIGHT_STATS))
        self.grad_stats = tuple(stats.get("grads", GRAD_STATS))
        self.update_ratio = bool(stats.get("update_ratio", True))
        self.params = list(net.params().items())
        hist = cfg.get("histograms") or {}
        self.sample_size = int(hist.get("sample", 1024)) if hist.get("enabled", True) else 0
        g = torch.Generator().manual_seed(seed)
        self.sample_idx = {
            n: (torch.randperm(p.numel(), generator=g)[: self.sample_size].sort().values if p.numel() > self.sample_size
                else torch.arange(p.numel()))
            for n, p in self.params
        } if self.sample_size else {}
        self._pending: list[torch.Tensor] = []      # one scalar per key
        self._keys: list[str] = []
        self._samples: list[tuple[str, int]] = []   # histogram samples: (key, size), after the scalars
        self._sample_tensors: list[torch.Tensor] = []
        self._host: dict[str, float] = {}           # values already on the host (loss, grad norm)
        self._before: list[torch.Tensor] | None = None
        self._hooks: list = []
        self._act_on = False
        if cfg.get("activations"):
            self._install_activation_hooks()

    # cadence ---------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether global step ``step`` (1-based) is a logging step."""
        return step % self.every == 0 or step == 1

    def to(self, device: torch.device) -> None:
        self.sample_idx = {n: i.to(device) for n, i in self.sample_idx.items()}

    # activations -----------------------------------------------------------------------------
    def _install_activation_hooks(self) -> None:
        for name, info in self.net.infos.items():
            if not name or info.is_block:
                continue
            module = self.net.module(name)
            relu = isinstance(module, nn.ReLU) or (isinstance(module, Dense) and module.activation == "relu")
            self._hooks.append(module.register_forward_hook(self._make_hook(name, relu)))

    def _make_hook(self, name: str, relu: bool):
        def hook(module, inputs, output):
            if not self._act_on or not isinstance(output, torch.Tensor):
                return
            out = output.detach().float()
            self._add(f"act_mean/{name}", out.mean())
            self._add(f"act_std/{name}", out.std() if out.numel() > 1 else out.new_zeros(()))
            if relu:
                self._add(f"act_dead/{name}", (out <= 0).float().mean())
        return hook

    def activations(self, on: bool) -> None:
        self._act_on = on

    # collection ------------------------------------------------------------------------------
    def _add(self, key: str, value: torch.Tensor) -> None:
        self._keys.append(key)
        self._pending.append(value.reshape(1))

    def before_step(self, grad_norm: float) -> None:
        """Gradient statistics; call after backward (and clipping), before ``optimizer.step()``."""
        self._host["train/grad_norm"] = grad_norm
        for name, p in self.params:
            if p.grad is None:
                continue
            for s, v in zip(self.grad_stats, _stats(p.grad, self.grad_stats)):
                self._add(f"grad_{s}/{name}", v)
            if self.sample_size:
                self._sample(f"grad/{name}", p.grad)
        if self.update_ratio:
            self._before = [p.detach().clone() for _, p in self.params]

    def after_step(self, step: int, loss: float, lrs: list[float]) -> LoggedStep:
        """Weight statistics and update ratios; then everything goes to the host in one copy."""
        self._host["train/loss"] = loss
        for i, (name, p) in enumerate(self.params):
            for s, v in zip(self.weight_stats, _stats(p, self.weight_stats)):
                self._add(f"weight_{s}/{name}", v)
            if self._before is not None:
                w = p.detach().float()
                delta = torch.linalg.vector_norm(w - self._before[i].float())
                self._add(f"update_ratio/{name}", delta / torch.linalg.vector_norm(w).clamp_min(1e-12))
            if self.sample_size:
                self._sample(f"weight/{name}", p)
        self._before = None
        # the one host transfer: every scalar, then every histogram sample
        values = torch.cat(self._pending + self._sample_tensors).cpu().tolist()
        n = len(self._keys)
        metrics = {**self._host, **dict(zip(self._keys, values[:n]))}
        self._host = {}
        for i, lr in enumerate(lrs):
            metrics["train/lr" if i == 0 else f"train/lr_group{i}"] = lr
        samples: dict[str, list[float]] = {}
        offset = n
        for key, size in self._samples:
            samples[key] = values[offset:offset + size]
            offset += size
        self._pending, self._keys, self._samples, self._sample_tensors = [], [], [], []
        return LoggedStep(step, metrics, samples)

    def _sample(self, key: str, t: torch.Tensor) -> None:
        values = t.detach().float().reshape(-1)[self.sample_idx[key.split("/", 1)[1]]]
        self._samples.append((key, values.numel()))
        self._sample_tensors.append(values)

    def keys_per_step(self) -> int:
        """How many metric keys one logging step writes (for the key budget)."""
        n = len(self.params)
        keys = n * (len(self.weight_stats) + len(self.grad_stats) + int(self.update_ratio)) + 3
        if self._hooks:
            keys += 3 * len(self._hooks)
        return keys

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
