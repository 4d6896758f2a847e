"""Data-parallel throughput on 2 CPU processes (gloo): DDP vs one flat all-reduce after backward vs
one process.

DDP (the runner's ``train.strategy=ddp``) all-reduces gradients in buckets while the backward pass
is still running; the flat variant (what the runner did before) waits for backward to finish, then
all-reduces one flat copy of every gradient. Each variant trains the same mid-size MLP on the same
global batches; the figure is optimizer steps per second of the training loop (median of rounds).

    python bench/ddp.py [--rounds 3] [--steps 60]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
OVERRIDES = ["data=classification", "data.features=784", "data.classes=10", "data.samples=16384",
             "data.batch_size=256", "data.val_fraction=0.0", "train.progress=quiet"]
MODEL = {"name": "mid", "layers": [{"type": "linear", "out": 1024, "activation": "relu"},
                                   {"type": "linear", "out": 1024, "activation": "relu"},
                                   {"type": "linear", "out": 10}]}


def worker(mode: str, steps: int) -> None:
    import torch

    import runner
    from runner.train.loop import fit
    from runner.train.strategy import Strategy, from_config

    prepared = runner.prepare(runner.compose([*OVERRIDES, f"train.max_steps={steps}"], model=MODEL))
    cfg = prepared.config.train
    if mode == "single":
        strategy: Strategy = Strategy(torch.device("cpu"))
    else:
        strategy = from_config(cfg.model_copy(update={"strategy": "ddp"}), torch.device("cpu"))
        if mode == "flat":
            strategy.__class__ = _flat_class()
    t0 = time.perf_counter()
    fit(prepared.net, prepared.data, cfg, strategy=strategy, every=10**9)
    seconds = time.perf_counter() - t0
    if strategy.is_main:
        print(json.dumps({"mode": mode, "steps_per_s": steps / seconds}), flush=True)
    strategy.close()


def _flat_class():
    from runner.train.strategy import _Group

    class FlatAllReduce(_Group):
        """After backward, one all-reduce of every gradient copied into one flat buffer."""

        name = "flat"

        def setup(self, net, cfg):
            super().setup(net, cfg)
            import torch.distributed as dist

            for p in net.parameters():
                dist.broadcast(p.data, src=0)
            self.params = list(net.parameters())
            return net

        @contextlib.contextmanager
        def grad_sync(self, model, sync):
            yield
            if sync:
                import torch
                import torch.distributed as dist

                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                flat /= self.world
                offset = 0
                for p, g in zip(self.params, grads):
                    p.grad = flat[offset:offset + g.numel()].view_as(g)
                    offset += g.numel()

    return FlatAllReduce


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--worker", choices=["single", "ddp", "flat"])
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_LOGGING_LEVEL": "WARNING"}
    results: dict[str, list[float]] = {"one process": [], "2 processes, flat all-reduce after backward": [],
                                       "2 processes, DDP (bucketed, overlapping backward)": []}
    modes = dict(zip(results, ("single", "flat", "ddp")))
    for _ in range(args.rounds):
        for name, mode in modes.items():
            cmd = [sys.executable, str(HERE), "--worker", mode, "--steps", str(args.steps)]
            if mode != "single":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent.parent)
            line = next((x for x in r.stdout.splitlines() if x.startswith("{")), None)
            if r.returncode != 0 or line is None:
                raise SystemExit(f"{mode} failed:\n{r.stderr[-3000:]}")
            results[name].append(json.loads(line)["steps_per_s"])
    base = statistics.median(results["one process"])
    print(f"{'variant':52} {'steps/s':>8} {'vs one process':>15}")
    for name, values in results.items():
        v = statistics.median(values)
        print(f"{name:52} {v:8.2f} {v / base:14.2f}x")
    print(f"(mid-size MLP 784-1024-1024-10, global batch 256, {args.steps} steps, {args.rounds} rounds, median)")


if __name__ == "__main__":
    main()
