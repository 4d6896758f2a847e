"""The training engine in one process: no host reads between logging steps, non-finite steps skipped
on the device, accumulation, mixed precision, compile."""
import math

import pytest
import torch

import runner
from runner.data import load_data
from runner.train import step as step_module
from runner.train.loop import fit
from runner.tracking.stats import StatsCollector
from runner.tracking.tracker import Tracker

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


class Recorder:
    """A sink that keeps what it is given (by runner name)."""

    def __init__(self):
        self.metrics = {}
        self.reviews = []

    def log(self, metrics, step):
        from runner.tracking.keys import internal

        self.metrics.setdefault(step, {}).update(dict(internal(k, v) for k, v in metrics.items()))

    def review(self, review):
        self.reviews.append(review)

    def flush(self):
        pass


def data(n=256, batch=16, **kw):
    return load_data({"kind": "uniform_regression", "samples": n, "batch_size": batch, "val_fraction": 0.0, **kw}, 0)


def test_no_host_reads_between_logging_steps(monkeypatch):
    # the accelerator path, run on the CPU: the flag stays on the device and the fused optimizer skips
    monkeypatch.setattr(step_module, "HOST_DEVICES", set())
    net = runner.build(model="d2l_mlp", init="d2l_normal")
    d = data(n=448, batch=16)  # 28 steps: logging at 1, 10, 20
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 10, "histograms": {"sample": 8}}), Recorder())
    reads, where = [], {"step": 0, "log": False, "inside": False}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            reads.append((where["step"], where["log"], where["inside"], _name))
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    run, read_back = step_module.Stepper.run, step_module.Ledger.read_back
    read_steps = []

    def run_step(self, group, ledger, i, log=False, tracker=None, step=0):
        where.update(step=step, log=log, inside=True)
        try:
            return run(self, group, ledger, i, log, tracker, step)
        finally:
            where["inside"] = False

    def reading(self, strategy):
        read_steps.append(where["step"])
        return read_back(self, strategy)
    monkeypatch.setattr(step_module.Stepper, "run", run_step)
    monkeypatch.setattr(step_module.Ledger, "read_back", reading)
    result = fit(net, d, {"optimizer": "adam", "lr": 0.01, "epochs": 1, "progress": "quiet", "grad_clip": 1.0},
                 tracker)
    monkeypatch.undo()
    assert result.steps == 28 and result.skipped == 0
    assert result.final["train/epoch_loss"] > 0
    inside_quiet = [r for r in reads if r[2] and not r[1]]
    assert inside_quiet == [], inside_quiet[:5]
    assert any(r[2] and r[1] for r in reads)  # the instrument does see the reads of logging steps
    assert read_steps == [1, 10, 20, 28]  # logging steps, then the epoch end
    assert sorted(tracker.sink.metrics) == [1, 10, 20, 28] and "grad_norm/hidden.weight" in tracker.sink.metrics[10]


@pytest.mark.parametrize("host_devices", [{"cpu"}, set()], ids=["flag read on the host", "skipped on the device"])
def test_a_bad_step_is_skipped_and_never_applied(monkeypatch, host_devices):
    from runner.train.config import TrainConfig
    from runner.train.optim import make_optimizer

    monkeypatch.setattr(step_module, "HOST_DEVICES", host_devices)
    assert make_optimizer(runner.build(model="d2l_mlp").parameters(), TrainConfig(optimizer="adamw")).defaults["fused"]
    net = runner.build(model="d2l_mlp")
    calls = {"n": 0}

    def poison(grad):  # the 3rd backward pass's gradient turns inf
        calls["n"] += 1
        return grad * (float("inf") if calls["n"] == 3 else 1.0)

    net.param("output.bias").register_hook(poison)
    stepped, original = [], torch.optim.AdamW.step

    def step(self, *a, **k):  # which path ran: the optimizer given the flag, or not called at all
        stepped.append(getattr(self, "found_inf", None) is not None)
        return original(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cfg = {"optimizer": "adamw", "lr": 0.1, "epochs": 1, "progress": "quiet", "nonfinite": {"policy": "skip"}}
    result = fit(net, data(n=64, batch=8), cfg)
    assert result.skipped == 1 and all(torch.isfinite(p).all() for p in net.parameters())
    assert stepped == ([False] * 7 if host_devices else [True] * 8)
    monkeypatch.undo()
    # the same training without the bad batch gives the same weights: the bad step changed nothing
    reference = runner.build(model="d2l_mlp")
    ref_data = data(n=64, batch=8)
    order = ref_data.order(0)
    keep = torch.cat([order[:16], order[24:]])  # batches 0, 1, then 3... (batch 2 was the bad one)
    ref_data.x_train, ref_data.y_train, ref_data.shuffle = ref_data.x_train[keep], ref_data.y_train[keep], False
    fit(reference, ref_data, cfg)
    for (n, p), q in zip(net.params().items(), reference.params().values()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_abort_after_trips_at_the_exact_step_even_between_logging_steps():
    from runner.train.nonfinite import NonFiniteError

    net = runner.build(model="d2l_mlp")
    d = data(n=160, batch=8)
    d.x_train[40:64, 0] = float("nan")  # batches 5, 6, 7 of an unshuffled epoch: steps 6, 7, 8
    d.shuffle = False
    cfg = {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "progress": "quiet",
           "nonfinite": {"policy": "abort_after", "patience": 3}}
    with pytest.raises(NonFiniteError, match=r"at step 8 \(epoch 0, batch 7\) \(3 bad step\(s\) in a row"):
        fit(net, d, cfg)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_weights_that_are_not_finite_stop_the_run_at_the_epoch_end(bad):
    from runner.train.nonfinite import NonFiniteError

    net = runner.build(model="d2l_mlp")
    with torch.no_grad():
        net.param("hidden.weight")[1, 2] = bad  # every step is then skipped: the weights stay bad
    cfg = {"optimizer": "sgd", "lr": 0.1, "epochs": 2, "progress": "quiet", "nonfinite": {"policy": "skip"}}
    with pytest.raises(NonFiniteError, match=r"the weights became non-finite \(NaN/Inf\) by step 10 \(epoch 0\)"):
        fit(net, data(n=160, batch=16), cfg)


def test_accumulating_micro_batches_matches_one_large_batch():
    results = []
    for batch, n in ((32, 1), (8, 4)):
        net = runner.build(model="d2l_mlp", init="d2l_normal")
        d = data(n=256, batch=batch, shuffle=True)
        r = fit(net, d, {"optimizer": "sgd", "lr": 0.1, "optimizer_args": {"momentum": 0.9}, "epochs": 2,
                         "accumulate": n, "progress": "quiet"})
        results.append((r.steps, net))
    assert results[0][0] == results[1][0] == 16
    for (name, p), q in zip(results[0][1].params().items(), results[1][1].params().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_accumulation_takes_statistics_per_optimizer_step():
    net = runner.build(model="d2l_mlp")
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 2, "activations": True, "histograms": {"enabled": False}}),
                      Recorder())
    fit(net, data(n=128, batch=8), {"epochs": 1, "accumulate": 4, "progress": "quiet"}, tracker)
    steps = sorted(tracker.sink.metrics)
    assert steps == [1, 2, 4] and "act_mean/hidden" in tracker.sink.metrics[2]  # 16 batches: 4 optimizer steps


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_logs(precision):
    net = runner.build(model="mlp_wide", data="classification", overrides=["model.layers.2.out=3"])
    d = load_data({"kind": "classification", "samples": 512, "batch_size": 64, "val_fraction": 0.2}, 0)
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 2, "histograms": {"enabled": False}}), Recorder())
    before = net.param("head.weight").detach().clone()
    r = fit(net, d, {"epochs": 2, "precision": precision, "progress": "quiet", "lr": 0.003}, tracker)
    assert r.skipped <= 2 and math.isfinite(r.final["val/loss"]) and r.final["val/accuracy"] > 0.6
    assert not torch.equal(before, net.param("head.weight")) and net.param("head.weight").dtype == torch.float32
    logged = tracker.sink.metrics[2]
    assert math.isfinite(logged["grad_norm/head.weight"]) and logged["train/loss"] > 0


def test_fp16_overflow_steps_are_skipped_and_counted():
    net = runner.build(model="d2l_mlp")
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 1, "histograms": {"enabled": False}}), Recorder())
    d = data(n=64, batch=8)
    d.x_train[8:16] = 7e4  # beyond fp16's range: the scaler's overflow check catches that step
    r = fit(net, d, {"epochs": 1, "precision": "fp16", "progress": "quiet", "nonfinite": {"policy": "skip"}}, tracker)
    assert r.skipped >= 1
    counts = [m["train/nonfinite_steps"] for _, m in sorted(tracker.sink.metrics.items()) if "train/nonfinite_steps" in m]
    assert counts and counts[-1] == r.skipped
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.slow
def test_compiled_training_matches_eager_and_says_activations_are_unavailable(store, tmp_path):
    from conftest import run_main

    eager = runner.build(model="d2l_mlp", init="d2l_normal")
    compiled = runner.build(model="d2l_mlp", init="d2l_normal")
    cfg = {"epochs": 1, "progress": "quiet", "optimizer": "sgd", "lr": 0.05}
    fit(eager, data(n=64, batch=16), cfg)
    fit(compiled, data(n=64, batch=16), {**cfg, "compile": True})
    for p, q in zip(eager.params().values(), compiled.params().values()):
        assert torch.allclose(p, q, atol=1e-5)
    r = run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}", "train.compile=true",
                 "tracking.activations=true", "train.epochs=1", "train.progress=quiet", "tracking.system_metrics=false")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "activation statistics are unavailable with train.compile" in r.stdout
    metrics = store.metrics(store.only_run())
    assert "grad_norm/hidden.weight" in metrics and not any(k.startswith("act_") for k in metrics)


@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_the_learning_rate_is_logged_when_it_changes(schedule):
    net = runner.build(model="d2l_mlp")
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 5, "histograms": {"enabled": False}}), Recorder())
    fit(net, data(n=320, batch=16), {"optimizer": "sgd", "lr": 0.1, "schedule": schedule, "epochs": 1,
                                     "progress": "quiet"}, tracker)
    logged = {step: m["train/lr"] for step, m in tracker.sink.metrics.items() if "train/lr" in m}
    if schedule is None:
        assert logged == {1: 0.1}
    else:
        assert sorted(logged) == [1, 5, 10, 15, 20]
        rates = [logged[s] for s in sorted(logged)]
        assert rates[0] == pytest.approx(0.1) and all(a > b for a, b in zip(rates, rates[1:]))
    assert all("train/loss" in m for step, m in tracker.sink.metrics.items() if step % 5 == 0)


def test_a_rate_that_returns_to_an_earlier_value_is_logged_again():
    net = runner.build(model="d2l_mlp")
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 1, "histograms": {"enabled": False}}), Recorder())
    tracker.start(torch.device("cpu"))
    for step, lr in enumerate([0.1, 0.05, 0.1, 0.1], start=1):
        tracker.before_step()
        tracker.after_step(step, 0.5, [lr])
    assert {s: m["train/lr"] for s, m in tracker.sink.metrics.items() if "train/lr" in m} == {1: 0.1, 2: 0.05, 3: 0.1}
    assert all(m["train/lr"] == lr for m, lr in zip((h.metrics for h in tracker.history), [0.1, 0.05, 0.1, 0.1]))
