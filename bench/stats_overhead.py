"""Statistics overhead: runner training (stats + MLflow tracking) vs a plain torch loop.

Same model, data, steps and seed; the plain loop logs nothing. Runs are interleaved in rounds
(each variant once a round, each round starting with the next variant): each variant's median time
is reported, and its ratio to the plain loop of the same round, as the median over rounds with the
lowest and highest. The tracked runs use the preset's tracking config (the default statistics).
Usage:

    python bench/stats_overhead.py [--rounds 7] [--cases char_gpt] [--every 10,1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import fresh_store, paired, timed  # noqa: E402

CASES = {
    "chapter MLP (4-4-1, batch 32)": dict(
        model="d2l_mlp", data="d2l_uniform", overrides=["data.samples=16384", "data.val_fraction=0.0"], epochs=2),
    "deep narrow MLP (12x dense 64 + layernorm, 50 tensors)": dict(
        model={"name": "deep", "layers": [
            {"type": "repeat", "name": "body", "times": 12, "name_format": "layer-{i}",
             "block": {"type": "sequential", "layers": [{"type": "linear", "name": "dense", "out": 64, "activation": "relu"},
                                                        {"type": "layernorm", "name": "norm"}]}},
            {"type": "linear", "name": "head", "out": 10}]},
        data="classification",
        overrides=["data.features=64", "data.classes=10", "data.samples=16384", "data.batch_size=64",
                   "data.val_fraction=0.0"],
        epochs=1),
    "mid-size MLP (784-1024-1024-10, batch 256)": dict(
        model={"name": "mid", "layers": [{"type": "flatten"},
                                         {"type": "linear", "out": 1024, "activation": "relu"},
                                         {"type": "linear", "out": 1024, "activation": "relu"},
                                         {"type": "linear", "out": 10}]},
        data="classification",
        overrides=["data.features=784", "data.classes=10", "data.samples=12800", "data.batch_size=256",
                   "data.val_fraction=0.0"],
        epochs=1),
    "char_gpt (4 transformer blocks, d=128, tied embeddings)": dict(
        groups={"experiment": "char_gpt"}, overrides=["data.steps_per_epoch=80", "data.val_fraction=0.0"], epochs=1),
}


def plain_loop(net, data, cfg) -> None:
    """The same optimizer, schedule, clipping and loss as the runner's loop, and nothing else."""
    from runner.train.optim import make_loss, make_optimizer, make_schedule

    opt = make_optimizer(net.parameters(), cfg)
    sched = make_schedule(opt, cfg, cfg.epochs * data.batches_per_epoch)
    loss_fn = make_loss(cfg, data.task)
    for epoch in range(cfg.epochs):
        for _, x, y in data.batches(epoch):
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--cases", default="", help="run only cases whose name contains this")
    ap.add_argument("--every", default="10,1", help="tracked variants: logging intervals, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    import runner
    from runner.tracking.sink import MlflowSink
    from runner.tracking.stats import StatsCollector
    from runner.tracking.tracker import Tracker
    from runner.train.loop import fit

    uri, client = fresh_store()
    exp = client.create_experiment("bench")
    print(f"{'case':56} {'variant':30} {'median s':>9} {'ratio':>7} {'range':>11}", flush=True)
    for case, spec in CASES.items():
        if args.cases not in case:
            continue
        groups = spec.get("groups") or {"model": spec["model"], "data": spec["data"]}
        prepared = runner.prepare(runner.compose(spec["overrides"], **groups))
        data = prepared.data
        init_state = {k: v.clone() for k, v in prepared.net.state_dict().items()}
        train_cfg = prepared.config.train.model_copy(update={"epochs": spec["epochs"], "progress": "quiet"})
        steps = spec["epochs"] * data.batches_per_epoch

        def fresh_net():
            net = prepared.net
            net.load_state_dict(init_state)
            return net

        def plain() -> float:
            net = fresh_net()
            return timed(lambda: plain_loop(net, data, train_cfg))

        def tracked(every: int):
            def run() -> float:
                net = fresh_net()
                tcfg = prepared.config.tracking.model_copy(update={"every_n_steps": every})
                run_id = client.create_run(exp).info.run_id
                sink = MlflowSink(uri, run_id)
                sink.wait_ready()  # as TrackedRun does before training starts
                tracker = Tracker(StatsCollector(net, tcfg), sink, tcfg)
                t = timed(lambda: fit(net, data, train_cfg, tracker))
                sink.close()  # delivery finishes off the clock: the loop never waited on it
                return t
            return run

        variants = {"plain torch loop": plain}
        for every in map(int, args.every.split(",")):
            variants[f"runner, stats every {every} steps" if every > 1 else "runner, stats every step"] = tracked(every)
        for name, (secs, ratio, low, high) in paired(variants, args.rounds).items():
            print(f"{case:56} {name:30} {secs:9.3f} {ratio:6.2f}x {low:5.2f}-{high:4.2f}x", flush=True)
        print(f"{'':56} ({steps} steps a run, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
