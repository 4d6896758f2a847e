"""The training loop: plain torch, readable top to bottom.

    setup:      device, strategy (one process, DDP or FSDP2), optimizer, schedule, resume
    each step:  one optimizer step over ``train.accumulate`` micro-batches (``runner.train.step``)
    now and then (logging steps, checkpoints, epoch ends): read the steps' losses and non-finite
                flags back, apply the non-finite policy, log, checkpoint
    epoch end:  validation, metrics, a checkpoint

It knows nothing of MLflow: a ``tracker`` (``runner.tracking.Tracker``) receives statistics on
logging steps and metrics at epoch ends. Between logging steps nothing is read back to the host.
Position in the data is (epoch, batch); the global ``step`` counts optimizer steps (a skipped
non-finite step counts too).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runner.errors import raise_if_terminated
from runner.train.nonfinite import NonFinitePolicy
from runner.train.optim import make_loss, make_optimizer, make_schedule, pick_device
from runner.train.progress import Progress
from runner.train.step import Ledger, Stepper

READ_EVERY = 10  # without a tracker, steps are still read back (and the policy applied) this often


@dataclass
class TrainResult:
    steps: int
    epochs: int
    final: dict[str, float] = field(default_factory=dict)  # last validation metrics and train loss
    skipped: int = 0
    seconds: float = 0.0


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, task: str, device, batch: int = 1024):
    """Validation loss (and accuracy for classes and tokens) over a whole split, read back once."""
    if len(x) == 0:
        return {}
    net.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
            out = net(xb)
            total += loss_fn(out, yb).double() * len(xb)
            if task in ("classification", "lm"):
                correct += (out.argmax(-1) == yb).sum()
    net.train()
    loss, right = torch.stack([total, correct]).tolist()
    metrics = {"val/loss": loss / len(x)}
    if task in ("classification", "lm"):
        metrics["val/accuracy"] = right / y.numel()
    return metrics


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
    step: int = 0         # optimizer steps taken (or skipped) so far
    loss_sum: float = 0.0
    seen: int = 0         # optimizer steps applied in this epoch
    skipped: int = 0
    in_a_row: int = 0


def groups(data, epoch: int, start: int, n: int):
    """The epoch's batches from ``start`` on, ``n`` at a time (the last group may be shorter)."""
    group = []
    for b, x, y in data.batches(epoch, start=start):
        group.append((b, x, y))
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def fit(net: nn.Module, data, cfg: Any, tracker: Any = None, checkpointer: Any = None,
        resume: dict | None = None, seed: int = 0, strategy: Any = None, every: int | None = None) -> TrainResult:
    """Train ``net`` on ``data`` as ``cfg`` (the ``train`` group) says.

    ``checkpointer`` (``runner.checkpoint.Checkpointer``) is called at epoch ends and every N
    steps; ``resume`` is a training state it saved: optimizer, schedule, RNGs and data position
    are restored so that training continues exactly as if it had never stopped. The global RNGs
    are seeded from ``seed`` (plus the rank) first, so the same config and seed train the same
    way. ``strategy`` (``runner.train.strategy``) places the model on one or several processes.
    ``every``: the logging cadence (the tracker's, by default), the same on every rank: steps 1
    and every ``every`` are read back.
    """
    from runner.model.build import check_trainable
    from runner.train.config import TrainConfig
    from runner.train.strategy import Strategy

    check_trainable(net)  # an output that does not fit the data's loss
    cfg = TrainConfig.of(cfg, "train")
    device = pick_device(cfg.device)
    strategy = strategy or Strategy(device)
    device = strategy.device if strategy.world > 1 else device
    net.to(device)
    model = strategy.setup(net, cfg)
    if cfg.compile:
        model = torch.compile(model)
    opt = make_optimizer(list(net.parameters()), cfg)
    loss_fn = make_loss(cfg, data.task)
    epochs, n = cfg.epochs, cfg.accumulate
    per_epoch = -(-data.batches_per_epoch // n)
    total = epochs * per_epoch if not cfg.max_steps else min(epochs * per_epoch, cfg.max_steps)
    sched = make_schedule(opt, cfg, total)
    policy = NonFinitePolicy(cfg.nonfinite.policy, cfg.nonfinite.patience)
    every = every or (tracker.collector.every if tracker is not None else READ_EVERY)
    stepper = Stepper(model, net, opt, sched, loss_fn, cfg, strategy, device)
    ledger = Ledger(device, per_epoch + 1)
    pos = Position()
    seed_everything(strategy.seed(seed))
    if resume is not None:
        from runner.checkpoint.state import set_rng_state

        strategy.load_optimizer_state(net, opt, resume["optimizer"])
        if sched is not None and resume.get("scheduler") is not None:
            sched.load_state_dict(resume["scheduler"])
        if stepper.scaler is not None and resume.get("scaler"):
            stepper.scaler.load_state_dict(resume["scaler"])
        pos = Position(**resume["position"])
        policy.skipped, policy.in_a_row = pos.skipped, pos.in_a_row
        set_rng_state(resume["rng"], strategy.rank, strategy.world)

    def state() -> dict:
        """The training state a checkpoint holds (collective: every rank calls it)."""
        from runner.checkpoint.state import rng_state

        pos.skipped, pos.in_a_row = policy.skipped, policy.in_a_row
        rngs = strategy.gather(rng_state())
        return {"optimizer": strategy.optimizer_state(net, opt),
                "scheduler": sched.state_dict() if sched is not None else None,
                "scaler": stepper.scaler.state_dict() if stepper.scaler is not None else None,
                "position": dict(pos.__dict__), "rng": rngs[0] if strategy.world == 1 else {"ranks": rngs},
                "tracker": tracker.state() if tracker is not None and strategy.is_main else None}

    def catch_up() -> None:
        """Read back the steps since the last read and apply the non-finite policy, in order."""
        for step, epoch, batch, loss, bad in ledger.read_back(strategy):
            if bad:
                what = "loss" if loss != loss or abs(loss) == float("inf") else "gradients"
                policy.bad(f"step {step} (epoch {epoch}, batch {batch})", what)
                if tracker is not None:
                    tracker.skipped(step, policy.skipped)
            else:
                policy.ok()
                pos.loss_sum += loss
                pos.seen += 1
                progress.advance(step, loss)

    def save(metrics: dict) -> None:
        if checkpointer is None:
            return
        if tracker is not None:
            tracker.flush()  # metrics up to a checkpoint survive a kill right after it
        st = {**state(), **({"final": metrics} if metrics else {})}
        checkpointer.save(pos.step, st, metrics, strategy.full_tensors(net))

    if tracker is not None:
        tracker.start(device)
        if resume is not None:
            tracker.load_state(resume.get("tracker"))
    progress = Progress(cfg.progress if strategy.is_main else "quiet", total)
    final: dict[str, float] = dict(resume.get("final") or {}) if resume else {}
    started = time.perf_counter()
    net.train()
    with progress:
        while pos.epoch < epochs and pos.step < total:
            epoch = pos.epoch
            epoch_start, seen_before = time.perf_counter(), pos.seen
            ledger.start_epoch()
            for group in groups(data, epoch, pos.batch, n):
                if pos.step >= total:
                    break
                pos.step += 1
                pos.batch = group[-1][0] + 1
                step = pos.step
                log_now = step % every == 0 or step == 1
                i = ledger.slot(step, epoch, group[0][0])
                stepper.run([(x, y) for _, x, y in group], ledger, i, log_now, tracker if log_now else None, step)
                if log_now:
                    raise_if_terminated()
                    catch_up()
                if checkpointer is not None and checkpointer.due(step) and pos.batch < data.batches_per_epoch:
                    catch_up()
                    save({})
            catch_up()
            if not stepper.weights_finite():
                from runner.train.nonfinite import NonFiniteError

                raise NonFiniteError(f"training stopped: the weights became non-finite (NaN/Inf) by step {pos.step} "
                                     f"(epoch {epoch}); lower train.lr, or set train.grad_clip")
            val = evaluate(net, data.x_val, data.y_val, loss_fn, data.task, device)
            strategy.after_eval(net)
            if any(not math.isfinite(v) for v in val.values()):
                from runner.train.nonfinite import NonFiniteError

                raise NonFiniteError(f"training stopped: validation gives {', '.join(f'{k} {v}' for k, v in val.items())} "
                                     f"at step {pos.step} (epoch {epoch}); lower train.lr, or set train.grad_clip")
            final = {**({"train/epoch_loss": pos.loss_sum / pos.seen} if pos.seen else {}), **val}
            rate = (pos.seen - seen_before) * data.batch_size * n / max(time.perf_counter() - epoch_start, 1e-9)
            if tracker is not None:
                tracker.epoch_end(epoch, pos.step, {**final, "train/samples_per_s": rate})
            progress.epoch_end(epoch, pos.step, final)
            pos.epoch, pos.batch, pos.loss_sum, pos.seen = epoch + 1, 0, 0.0, 0
            save(final)
    return TrainResult(pos.step, pos.epoch, final, policy.skipped, time.perf_counter() - started)
