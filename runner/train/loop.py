"""The training loop: plain torch, readable top to bottom.

It knows nothing of MLflow: a ``tracker`` (``runner.tracking.Tracker``) receives statistics on
logging steps and metrics at epoch ends. Position in the data is (epoch, batch), the global
``step`` counts batches consumed (a skipped non-finite step counts too).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runner.train.nonfinite import NonFinitePolicy
from runner.train.optim import make_loss, make_optimizer, make_schedule, pick_device
from runner.train.progress import Progress


@dataclass
class TrainResult:
    steps: int
    epochs: int
    final: dict[str, float] = field(default_factory=dict)  # last validation metrics and train loss
    skipped: int = 0
    seconds: float = 0.0


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, task: str, device, batch: int = 1024):
    """Validation loss (and accuracy for classification) over a whole split."""
    if len(x) == 0:
        return {}
    net.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
            out = net(xb)
            total += loss_fn(out, yb).item() * len(xb)
            if task in ("classification", "lm"):
                correct += (out.argmax(-1) == yb).sum().item()
    net.train()
    metrics = {"val/loss": total / len(x)}
    if task in ("classification", "lm"):
        metrics["val/accuracy"] = correct / y.numel()
    return metrics


class FiniteCheck:
    """Whether every gradient is finite: one fused pass (the check torch's GradScaler uses, with
    a scale of 1, so the gradients are untouched) and one host read of a flag."""

    def __init__(self, device: torch.device):
        self.found = torch.zeros(1, device=device)
        self.one = torch.ones(1, device=device)

    def __call__(self, params: list) -> bool:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return True
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found, self.one)
        except (RuntimeError, NotImplementedError):  # a device or dtype it does not cover
            return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if self.found.item():
            self.found.zero_()
            return False
        return True


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that training draws from (dropout uses torch's)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Position:
    """Where training is: the next batch to take, and the running counts of the epoch."""

    epoch: int = 0
    batch: int = 0        # next batch index within ``epoch``
    step: int = 0         # batches consumed so far
    loss_sum: float = 0.0
    seen: int = 0         # optimizer steps taken in this epoch
    skipped: int = 0
    in_a_row: int = 0


def fit(net: nn.Module, data, cfg: dict, tracker: Any = None, checkpointer: Any = None,
        resume: dict | None = None, seed: int = 0, dist: Any = None) -> TrainResult:
    """Train ``net`` on ``data`` as ``cfg`` (the ``train`` group) says.

    ``checkpointer`` (``runner.checkpoint.Checkpointer``) is called at epoch ends and every N
    steps; ``resume`` is a training state it saved: optimizer, schedule, RNGs and data position
    are restored so that training continues exactly as if it had never stopped. The global RNGs
    are seeded from ``seed`` first, so the same config and seed train the same way. ``dist``
    (``runner.train.distributed.Dist``) makes this one process of a data-parallel group.
    """
    from runner.train.config import TrainConfig

    cfg = TrainConfig.of(cfg, "train")
    device = pick_device(cfg.device)
    if dist is not None and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    net.to(device)
    params = list(net.parameters())
    if dist is not None:
        dist.broadcast_([p.data for p in params])
    opt = make_optimizer(params, cfg)
    loss_fn = make_loss(cfg, data.task)
    epochs = cfg.epochs
    total = epochs * data.batches_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = make_schedule(opt, cfg, total)
    policy = NonFinitePolicy(cfg.nonfinite.policy, cfg.nonfinite.patience)
    clip = cfg.grad_clip
    finite = FiniteCheck(device)
    pos = Position()
    seed_everything(seed)
    if resume is not None:
        from runner.checkpoint.state import set_rng_state

        opt.load_state_dict(resume["optimizer"])
        if sched is not None and resume.get("scheduler") is not None:
            sched.load_state_dict(resume["scheduler"])
        pos = Position(**resume["position"])
        policy.skipped, policy.in_a_row = pos.skipped, pos.in_a_row
        set_rng_state(resume["rng"])

    def state() -> dict:
        from runner.checkpoint.state import rng_state

        pos.skipped, pos.in_a_row = policy.skipped, policy.in_a_row
        return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                "position": dict(pos.__dict__), "rng": rng_state(),
                "tracker": tracker.state() if tracker is not None else None}

    if tracker is not None:
        tracker.start(device)
        if resume is not None:
            tracker.load_state(resume.get("tracker"))
    progress = Progress(cfg.progress, total)
    final: dict[str, float] = dict(resume.get("final") or {}) if resume else {}
    started = time.perf_counter()
    net.train()
    with progress:
        while pos.epoch < epochs and pos.step < total:
            epoch = pos.epoch
            epoch_start, seen_before = time.perf_counter(), pos.seen
            for b, xb, yb in data.batches(epoch, start=pos.batch):
                if pos.step >= total:
                    break
                pos.step += 1
                pos.batch = b + 1
                step = pos.step
                log_now = tracker is not None and tracker.due(step)
                n_global = len(xb)
                if dist is not None:
                    xb, yb = dist.shard(xb, yb)
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if log_now:
                    tracker.activations(True)
                out = net(xb)
                loss = loss_fn(out, yb)
                if log_now:
                    tracker.activations(False)
                opt.zero_grad(set_to_none=True)
                if dist is not None:  # this share's part of the global batch's mean loss
                    loss = loss * (len(xb) / n_global)
                    loss.backward()
                    for p in params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                    loss = loss.detach().clone()
                    dist.sum_([p.grad for p in params] + [loss.reshape(1)])
                else:
                    loss.backward()
                loss_value = loss.item()
                finite_loss = math.isfinite(loss_value)
                if not (finite_loss and finite(params)):
                    what = "loss" if not finite_loss else "gradients"
                    policy.bad(f"step {step} (epoch {epoch}, batch {b})", what)
                    opt.zero_grad(set_to_none=True)
                    if tracker is not None:
                        tracker.skipped(step, policy.skipped)
                    continue
                policy.ok()
                # the global gradient norm before clipping; on logging steps without clipping the
                # tracker computes it with its statistics (None)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip).item() if clip else None
                if log_now:
                    tracker.before_step(grad_norm)
                opt.step()
                if sched is not None:
                    sched.step()
                pos.loss_sum += loss_value
                pos.seen += 1
                if log_now:
                    tracker.after_step(step, loss_value, [g["lr"] for g in opt.param_groups])
                progress.advance(step, loss_value)
                if checkpointer is not None and checkpointer.due(step) and pos.batch < data.batches_per_epoch:
                    if tracker is not None:
                        tracker.flush()
                    checkpointer.save(step, state(), {})
            val = evaluate(net, data.x_val, data.y_val, loss_fn, data.task, device)
            final = {"train/epoch_loss": pos.loss_sum / max(pos.seen, 1), **val}
            rate = (pos.seen - seen_before) * data.batch_size / max(time.perf_counter() - epoch_start, 1e-9)
            if tracker is not None:
                tracker.epoch_end(epoch, pos.step, {**final, "train/samples_per_s": rate})
            progress.epoch_end(epoch, pos.step, final)
            pos.epoch, pos.batch, pos.loss_sum, pos.seen = epoch + 1, 0, 0.0, 0
            if checkpointer is not None:
                if tracker is not None:
                    tracker.flush()  # metrics up to a checkpoint survive a kill right after it
                checkpointer.save(pos.step, {**state(), "final": final}, final)
    return TrainResult(pos.step, pos.epoch, final, policy.skipped, time.perf_counter() - started)
