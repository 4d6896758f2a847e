"""One optimizer step, and the per-step record the loop reads back only now and then.

A step takes ``train.accumulate`` micro-batches (each this process's share of a global batch),
runs forward and backward under the configured precision (``bf16``/``fp16`` autocast; ``fp16``
with a gradient scaler), checks the loss and every gradient for NaN/Inf in one fused pass on the
device, clips, and steps the optimizer. A bad step is skipped *on the device*: the fused
optimizers take the non-finite flag as ``found_inf``, as they do under ``GradScaler``, so the
host never waits for the device between logging steps. On the CPU, where the device is the host
and reading the flag back waits for nothing, the flag is read and a bad step skipped in Python
(as ``GradScaler`` does for optimizers that take no ``found_inf``): there the fused optimizer's
found_inf handling costs more than the read. (With an optimizer that cannot take the flag, it is
read back every step on any device.)

The :class:`Ledger` keeps each step's loss and flag in device buffers; the loop reads them back at
logging steps, checkpoints and epoch ends, in one transfer, and applies the non-finite policy to
them in step order.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

HOST_DEVICES = {"cpu"}  # device types whose memory is the host's: a read-back synchronises nothing


def _local(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) gradient's local shard; any other tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


@dataclass
class Ledger:
    """Loss and non-finite flag of every step of the current epoch, left on the device."""

    device: torch.device
    size: int
    bad: torch.Tensor = field(init=False)
    losses: list[torch.Tensor] = field(default_factory=list)      # one 0-d tensor per step
    where: list[tuple[int, int, int]] = field(default_factory=list)  # (step, epoch, first batch) per slot
    read: int = 0

    def __post_init__(self):
        self.bad = torch.zeros(self.size, device=self.device)
        self.flags = list(self.bad.unbind(0))  # 0-d views, one per slot: the steps' found_inf

    def start_epoch(self) -> None:
        self.bad.zero_()
        self.losses, self.where, self.read = [], [], 0

    def slot(self, step: int, epoch: int, batch: int) -> int:
        self.where.append((step, epoch, batch))
        return len(self.where) - 1

    def read_back(self, strategy) -> list[tuple[int, int, int, float, bool]]:
        """(step, epoch, batch, loss, bad) of the steps not read yet, in one transfer; the loss is
        the mean over processes."""
        start, end = self.read, len(self.where)
        if start == end:
            return []
        losses = torch.stack(self.losses[start:end]).float()
        if strategy.world > 1:
            strategy.reduce_mean_(losses)
        host = torch.cat([losses, self.bad[start:end]]).cpu().tolist()
        self.read = end
        n = end - start
        return [(*self.where[start + i], host[i], host[n + i] > 0) for i in range(n)]


class Stepper:
    """Runs one optimizer step (see the module docstring)."""

    def __init__(self, model, net, opt, sched, loss_fn, cfg, strategy, device: torch.device):
        self.model, self.net, self.opt, self.sched, self.loss_fn = model, net, opt, sched, loss_fn
        self.params = list(net.parameters())
        self.strategy = strategy
        self.device = device
        self.clip = cfg.grad_clip
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        self.one = torch.ones((), device=device)
        # fused optimizers take found_inf; on the host a read is cheaper (see the module docstring)
        self.device_skip = bool(opt.defaults.get("fused")) and device.type not in HOST_DEVICES
        self.sharded = strategy.sharded()

    def run(self, group, ledger: Ledger, i: int, log: bool = False, tracker=None, step: int = 0) -> bool | None:
        """Train on ``group`` (micro-batches (x, y) of the global batch); the step's loss and
        whether it was non-finite go into slot ``i`` of the ``ledger``, on the device.
        On a logging step (``log``, the same on every rank) the flag is read here and the
        ``tracker`` (rank 0's, or every rank's when statistics are sharded) takes statistics;
        returns whether the step was good then, else None (not known on the host)."""
        bad = ledger.flags[i]
        shares = group if self.strategy.world == 1 else [self.strategy.shard(x, y) for x, y in group]
        total = sum(len(x) for x, _ in shares) if len(shares) > 1 else 0
        last = len(shares) - 1
        acc = None
        for k, (x, y) in enumerate(shares):
            if x.device != self.device:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            watch = tracker is not None and k == 0
            with self.strategy.grad_sync(self.model, k == last):
                if watch:
                    tracker.activations(True)
                with self.autocast():
                    loss = self.loss_fn(self.model(x), y)
                    if total:  # each micro-batch's part of the mean over the global batch
                        loss = loss * (len(x) / total)
                if watch:
                    tracker.activations(False)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            acc = loss.detach() if acc is None else acc + loss.detach()
        ledger.losses.append(acc)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.sharded:
            grads = [_local(g) for g in grads]
        grads.append(acc)  # the loss is checked in the same fused pass
        torch._amp_foreach_non_finite_check_and_unscale_(grads, bad, self.one)
        if self.strategy.world > 1:
            self.strategy.reduce_max_(bad.view(1))
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip) if self.clip else None
        good = None
        if log:  # a logging step: the flag is read now anyway
            good = not bool(bad)
            if good and tracker is not None:
                tracker.before_step(_full(norm))
        if self.device_skip:
            self.opt.found_inf, self.opt.grad_scale = bad, None
            self.opt.step()
            del self.opt.found_inf, self.opt.grad_scale
        elif good or (good is None and not bool(bad)):
            self.opt.step()
        lrs = [g["lr"] for g in self.opt.param_groups] if good else None  # the rates this step used
        if self.sched is not None:
            self.sched.step()  # the schedule follows batches consumed, skipped ones included
        if self.scaler is not None:
            self.scaler.update()
        if good:
            mean = self._mean(acc)  # collective under torchrun: every rank, every logging step
            if tracker is not None:
                tracker.after_step(step, mean, lrs)
        self.opt.zero_grad(set_to_none=True)
        return good

    def weights_finite(self) -> bool:
        """Whether every parameter is finite (one fused check; read back: at epoch ends only).
        A step is never applied when its loss or gradients are not finite, but an update can
        still overflow; a run must not end a success with weights that did."""
        values = [p.detach() for p in self.params]
        if self.sharded:
            values = [_local(v) for v in values]
        values = [v for v in values if v.numel()]  # an empty shard has nothing to check
        # the largest magnitude of each tensor: NaN or Inf when any value is, and no copy of the weights
        found = torch.zeros((), device=self.device)
        if values:
            largest = torch.stack([n.float() for n in torch._foreach_norm(values, float("inf"))])
            found = (~largest.isfinite()).any().float()
        if self.strategy.world > 1:
            self.strategy.reduce_max_(found.view(1))
        return not bool(found)

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.strategy.reduce_mean_(t.detach().clone()) if self.strategy.world > 1 else t


def _full(t):
    if t is None:
        return None
    return t.full_tensor() if hasattr(t, "full_tensor") else t
