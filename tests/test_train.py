"""Training end to end against a real MLflow sqlite store, read back with MlflowClient."""
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

import runner
from conftest import REPO, run_cli, run_main
from runner.tracking.reduce import SMALL
from runner.tracking.run import TrackedRun
from runner.tracking.sink import MlflowSink
from runner.tracking.stats import StatsCollector

pytestmark = pytest.mark.slow

WEIGHT_NAMES = ["mean", "std", "min", "max", "norm"]  # every statistic there is (the default logs fewer)
GRAD_NAMES = ["mean", "std", "maxabs", "norm"]
WEIGHT = [f"weight_{s}" for s in WEIGHT_NAMES]
GRAD = [f"grad_{s}" for s in GRAD_NAMES]
EVERY_STAT = (f"tracking.stats.weights=[{','.join(WEIGHT_NAMES)}]", f"tracking.stats.grads=[{','.join(GRAD_NAMES)}]")


def train(store, tmp_path, *args):
    """A training run through the CLI's ``main`` in this process (the subprocess tests below cover
    what needs a process of its own: signals, exit statuses, start-up)."""
    return run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}", "train.progress=quiet",
                    "tracking.system_metrics=false", *args)


def test_short_run_logs_every_stat_for_every_parameter_at_the_expected_steps(store, tmp_path):
    r = train(store, tmp_path, "train.epochs=2", "tracking.every_n_steps=5", "tracking.activations=true",
              "init=d2l_xavier_42", *EVERY_STAT)
    assert r.returncode == 0, r.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED"
    c = store.client
    steps_per_epoch = math.ceil(512 * 0.8 / 32)
    total = 2 * steps_per_epoch
    expected = [1] + [s for s in range(5, total + 1, 5)]
    for p in ("hidden.weight", "hidden.bias", "output.weight", "output.bias"):
        for stat in WEIGHT + GRAD + ["update_ratio"]:
            hist = store.history(run, f"{stat}/{p}")
            if p == "output.bias" and stat in ("weight_std", "weight_min", "weight_max", "grad_std"):
                assert hist == [], stat  # the spread of one value means nothing: not logged
                continue
            assert [m.step for m in hist] == expected, (stat, p)
    for layer in ("hidden", "output", "flatten"):
        assert [m.step for m in store.history(run, f"act_mean/{layer}")] == expected
    assert "act_dead/hidden" in store.metrics(run) and "act_dead/output" not in store.metrics(run)
    for key in ("train/loss", "train/grad_norm"):
        assert [m.step for m in store.history(run, key)] == expected, key
    assert [(m.step, m.value) for m in store.history(run, "train/lr")] == [(1, 0.01)]  # constant: logged once
    assert [m.step for m in store.history(run, "val/loss")] == [steps_per_epoch, total]
    # MLflow's names sort for a reviewer: losses first, then gradients in network order, then
    # update ratios as log10 (healthy ~ -3 on a linear axis)
    keys = sorted(run.data.metrics)
    assert keys[0].startswith("1 train/") and "2 val/loss" in keys
    assert "3 grad_norm/00 hidden.weight" in keys and "3 grad_norm/03 output.bias" in keys
    ratios = {k: v for k, v in run.data.metrics.items() if k.startswith("4 log10 update_ratio/")}
    assert len(ratios) == 4 and all(-6 < v < 0 for v in ratios.values())
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["runner.health"] == "ok" and "Health: ok" in run.data.tags["mlflow.note.content"]
    # params: the flattened resolved config; tags: overrides, group choices
    assert run.data.params["model.name"] == "d2l_mlp"
    assert run.data.params["model.layers.1.activation"] == "relu"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["runner.init"] == "d2l_xavier_42"
    assert "train.epochs=2" in run.data.tags["runner.overrides"]
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"summary.txt", "init_report.json", "tie_map.json", "model.json", "architecture.svg", "config.yaml",
            "hydra", "heatmaps", "report.html"} <= artifacts
    assert "images" not in artifacts and "mlflow.loggedImages" not in run.data.tags  # no image cards in the charts
    assert {a.path for a in c.list_artifacts(run.info.run_id, "hydra")} >= {"hydra/config.yaml", "hydra/overrides.yaml"}
    for kind in ("weight", "grad"):
        maps = {a.path for a in c.list_artifacts(run.info.run_id, f"heatmaps/{kind}")}
        assert {f"heatmaps/{kind}/{p}.png" for p in ("hidden.weight", "hidden.bias", "output.weight", "output.bias")} == maps
    # the closing message says where the run is and how to look at it
    assert f"run {run.info.run_id} (FINISHED)" in r.stdout
    assert f"mlflow ui --backend-store-uri '{store.uri}' --host 127.0.0.1" in r.stdout
    delivered = sum(len(c.get_metric_history(run.info.run_id, k)) for k in run.data.metrics)
    assert f"metrics: {delivered}/{delivered} delivered" in r.stdout


def test_tied_model_logs_one_entry_per_group(store, tmp_path):
    r = train(store, tmp_path, "model=d2l_tied", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    keys = set(store.metrics(store.only_run()))
    assert "weight_norm/shared.weight" in keys and "grad_norm/shared.weight" in keys
    assert not any("shared_again" in k for k in keys)


def test_nan_in_data_hits_the_nonfinite_policy_and_fails_the_run(store, tmp_path):
    r = train(store, tmp_path, "data.nan_at=0", "data.shuffle=false", "train.nonfinite.policy=abort")
    assert r.returncode == 1  # the run ran and failed (2 is for input refused before anything ran)
    import re

    assert re.search(r"training stopped: non-finite loss at step \d+ \(epoch 0, batch \d+\) "
                     r"\(1 bad step\(s\) in a row", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert store.only_run().info.status == "FAILED"


def test_skip_policy_skips_and_counts_and_keeps_weights_finite(store, tmp_path):
    r = train(store, tmp_path, "+data.nan_at=3", "train.nonfinite.policy=skip", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    run = store.only_run()
    hist = store.history(run, "train/nonfinite_steps")
    assert [m.value for m in hist] == [1.0, 2.0, 3.0]  # the bad sample sits in one batch per epoch
    assert all(math.isfinite(v) for k, v in store.metrics(run).items() if k.startswith("weight_"))
    assert "3 non-finite step(s) skipped" in r.stdout


def test_abort_after_patience(tmp_path):
    # every batch non-finite: abort_after stops at the third in a row
    net = runner.build(model="d2l_mlp")
    from runner.data import load_data
    from runner.train.loop import fit
    from runner.train.nonfinite import NonFiniteError

    data = load_data({"kind": "uniform_regression", "samples": 64, "batch_size": 64, "val_fraction": 0.0}, 0)
    data.x_train[:, 0] = float("inf")
    cfg = {"optimizer": "sgd", "lr": 0.1, "epochs": 10, "progress": "quiet",
           "nonfinite": {"policy": "abort_after", "patience": 3}}
    with pytest.raises(NonFiniteError, match=r"at step 3 \(epoch 2, batch 0\) \(3 bad step\(s\) in a row"):
        fit(net, data, cfg)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_nonfinite_gradients_under_a_finite_loss_are_caught_and_skipped(clip):
    from runner.data import load_data
    from runner.train.loop import fit

    net = runner.build(model="d2l_mlp")
    data = load_data({"kind": "uniform_regression", "samples": 64, "batch_size": 8, "val_fraction": 0.0}, 0)
    calls = {"n": 0}

    def poison(grad):  # the gradient of the 2nd and 5th backward passes turns NaN / inf
        calls["n"] += 1
        return grad * {2: float("nan"), 5: float("inf")}.get(calls["n"], 1.0)

    net.param("output.bias").register_hook(poison)
    cfg = {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "progress": "quiet", "grad_clip": clip,
           "nonfinite": {"policy": "skip"}}
    result = fit(net, data, cfg)
    assert result.steps == 8 and result.skipped == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_sigterm_ends_the_run_killed(store, tmp_path):
    cmd = [sys.executable, "-m", "runner", f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}",
           "train.progress=quiet", "tracking.system_metrics=false", "train.epochs=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = store.runs()
            if runs and runs[0].info.status == "RUNNING" and store.client.get_run(runs[0].info.run_id).data.metrics:
                break
            time.sleep(0.3)
        else:
            pytest.fail("the run never started")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert store.only_run().info.status == "KILLED"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_killed_during_start_up_resumes_into_the_same_run(store, tmp_path, sig):
    """Killed as soon as its MLflow run exists (before any checkpoint), then started again with
    train.resume=auto: the store holds one run, FINISHED, with the whole history."""
    cmd = [sys.executable, "-m", "runner", f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}",
           "train.progress=quiet", "tracking.system_metrics=false", "train.epochs=2", "train.resume=auto"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not store.runs() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 143), err[-2000:]
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))  # killed before its first checkpoint
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert [m.step for m in store.history(run, "val/loss")] == [13, 26]


class SigtermInside:
    """Sends this process SIGTERM from inside a context whose exceptions Python drops."""

    def __init__(self):
        self.armed = False

    def fire(self):
        if self.armed:
            import os

            self.armed = False
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecode, where the handler runs: inside this context
                pass


@pytest.fixture
def sigterm_raises():
    from runner.cli import catch_sigterm, restore_sigterm

    previous = catch_sigterm()
    yield
    restore_sigterm(previous)


def test_a_sigterm_during_the_writers_fork_is_not_lost(store, sigterm_raises):
    import os

    from runner.errors import Terminated

    during = SigtermInside()
    os.register_at_fork(after_in_parent=during.fire)  # where logging's own at-fork callbacks run
    run_id = store.client.create_run(store.client.create_experiment("fork")).info.run_id
    during.armed = True
    with pytest.raises(Terminated):
        MlflowSink(store.uri, run_id)
    assert not during.armed


def test_a_sigterm_swallowed_by_a_finalizer_stops_training_at_the_next_logging_step(sigterm_raises):
    import gc

    from runner.data import load_data
    from runner.errors import Terminated
    from runner.train.loop import fit

    class Finalized:
        def __del__(self):
            inside.fire()

    inside = SigtermInside()
    inside.armed = True
    victim = [Finalized()]
    victim.append(victim)  # a cycle: freed by the garbage collector, whose __del__ errors are ignored
    del victim
    gc.collect()
    assert not inside.armed
    net = runner.build(model="d2l_mlp")
    data = load_data({"kind": "uniform_regression", "samples": 256, "batch_size": 16, "val_fraction": 0.0}, 0)
    with pytest.raises(Terminated):
        fit(net, data, {"optimizer": "sgd", "lr": 0.1, "epochs": 1, "progress": "quiet"})


def test_an_error_a_library_made_of_a_sigterm_still_ends_the_run_killed(store, tmp_path, monkeypatch):
    """A SIGTERM raised inside a library can come out as that library's own error (seen with
    OmegaConf's ConfigKeyError during start-up): the run still ends KILLED, exit status 143."""
    from runner.checkpoint import checkpointer
    from runner.errors import Terminated

    def cut_short(*args, **kwargs):
        Terminated.received = True  # what the SIGTERM handler records before raising
        raise KeyError("'NoneType' object has no attribute '_invalidate_flags_cache'")
    monkeypatch.setattr(checkpointer, "Checkpointer", cut_short)
    r = run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}", "train.progress=quiet",
                 "tracking.system_metrics=false")
    assert r.returncode == 143 and "terminated (SIGTERM)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert store.only_run().info.status == "KILLED"
    assert not Terminated.received  # reset for whatever this process runs next


def test_exception_inside_the_run_marks_it_failed(store, tmp_path):
    cfg = runner.prepare(runner.compose([f"tracking.uri={store.uri}", "tracking.system_metrics=false"])).config
    with pytest.raises(RuntimeError, match="boom"):
        with TrackedRun(cfg, tmp_path):
            raise RuntimeError("boom")
    assert store.only_run().info.status == "FAILED"


def test_sink_delivers_everything_even_with_a_tiny_queue(store):
    exp = store.client.create_experiment("sink")
    run_id = store.client.create_run(exp).info.run_id
    sink = MlflowSink(store.uri, run_id, queue_size=2)
    for step in range(1, 51):
        sink.log({f"m{i}/x": float(step * i) for i in range(20)}, step)
    report = sink.close()
    assert report.queued == 1000 and report.delivered == 1000 and report.lost == 0 and not report.errors
    stored = sum(len(store.client.get_metric_history(run_id, f"m{i}/x")) for i in range(20))
    assert stored == 1000
    assert [m.value for m in store.client.get_metric_history(run_id, "m3/x")] == [3.0 * s for s in range(1, 51)]


def test_a_flush_has_the_writer_write_what_it_holds_at_once(store, monkeypatch):
    import runner.tracking.sink as sink_module

    monkeypatch.setattr(sink_module, "FLUSH_SECONDS", 3600.0)  # the forked writer would hold values an hour
    exp = store.client.create_experiment("flush")
    run_id = store.client.create_run(exp).info.run_id
    sink = MlflowSink(store.uri, run_id)
    sink.wait_ready()
    sink.log({"train/loss": 0.5}, 1)
    sink.flush()  # as before a checkpoint
    deadline = time.time() + 60
    while time.time() < deadline and not store.client.get_metric_history(run_id, "train/loss"):
        time.sleep(0.1)
    held = store.client.get_metric_history(run_id, "train/loss")
    sink.close()
    assert [(m.step, m.value) for m in held] == [(1, 0.5)]


def test_keys_the_store_refuses_are_dropped_once_and_every_other_value_is_delivered(store, tmp_path):
    """One key MLflow's validation refuses (a character it does not allow) and one only the store
    refuses (longer than its column): the real writer reports each once, drops only those, and
    delivers every other value without spooling anything."""
    exp = store.client.create_experiment("refused")
    run_id = store.client.create_run(exp).info.run_id
    spool = tmp_path / "mlflow_spool.jsonl"
    sink = MlflowSink(store.uri, run_id, spool_file=str(spool))
    bad_char, too_long = "act_mean/enc(0)", "weight_norm/" + "x" * 300
    for step in range(1, 41):
        sink.log({"train/loss": 1.0 / step, bad_char: 1.0, too_long: 2.0, "weight_norm/w": float(step)}, step)
    report = sink.close()
    assert report.queued == 160 and report.delivered == 80 and report.lost == 80 and report.left == 0  # lost: refused
    refused = [e for e in report.errors if "refuses the metric key" in e]
    assert len(refused) == 2 and any("enc(0)" in e for e in refused) and any("250" in e for e in refused)
    for key, value in (("train/loss", lambda s: 1.0 / s), ("weight_norm/w", float)):
        history = store.client.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(s, pytest.approx(value(s))) for s in range(1, 41)]
    assert set(store.client.get_run(run_id).data.metrics) == {"train/loss", "weight_norm/w"}
    assert not spool.exists() or not spool.read_text().strip()


def test_collector_values_match_direct_computation():
    net = runner.build(model="d2l_mlp")
    c = StatsCollector(net, {"every_n_steps": 1, "histograms": {"enabled": False}})
    x = torch.rand(8, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(x).pow(2).sum().backward()
    gnorm = torch.nn.utils.clip_grad_norm_(list(net.parameters()), 1e9)
    grads = {n: p.grad.clone() for n, p in net.params().items()}
    before = {n: p.detach().clone() for n, p in net.params().items()}
    c.before_step(gnorm.item())
    opt.step()
    logged = c.after_step(1, 0.25, [0.5])
    m = logged.metrics
    w = net.param("hidden.weight").detach()
    assert m["weight_norm/hidden.weight"] == pytest.approx(w.norm().item())
    assert m["weight_std/hidden.weight"] == pytest.approx(w.std().item())
    assert m["grad_maxabs/output.weight"] == pytest.approx(grads["output.weight"].abs().max().item())
    ratio = (w - before["hidden.weight"]).norm() / w.norm()
    assert m["update_ratio/hidden.weight"] == pytest.approx(ratio.item(), rel=1e-5)
    assert m["train/grad_norm"] == pytest.approx(gnorm.item()) and m["train/loss"] == 0.25 and m["train/lr"] == 0.5
    assert len(m) == c.keys_per_step()
    # the default families: what the health verdict reads, and the gradient's peak
    families = {k.split("/")[0] for k in m if not k.startswith("train/")}
    assert families == {"weight_std", "weight_norm", "grad_norm", "grad_maxabs", "update_ratio"}
    assert sum(k.startswith("weight_std/") for k in m) == 3  # the 1-unit output bias has no spread


def test_collector_matches_torch_for_packed_and_large_tensors_constant_and_unused_ones():
    # the 30x40 and 40x30 weights go through the one-by-one path, the rest through the packed
    # buffer; the head's weight is constant
    net = runner.build(model={"name": "mixed", "layers": [
        {"type": "linear", "out": 40, "name": "wide", "activation": "tanh"},
        {"type": "linear", "out": 30, "name": "big"},
        {"type": "linear", "out": 1, "name": "head"}]},
        init={"rules": [{"params": "head.weight", "init": "constant", "args": {"value": 0.5}}]},
        data={"kind": "uniform_regression", "features": 30})  # a 1-output head: regression
    c = StatsCollector(net, {"every_n_steps": 1, "histograms": {"enabled": True, "sample": 16},
                             "stats": {"weights": WEIGHT_NAMES, "grads": GRAD_NAMES}})
    sizes = {n: p.numel() for n, p in net.params().items()}
    assert sizes["big.weight"] > SMALL and sizes["wide.weight"] > SMALL and sizes["head.weight"] <= SMALL
    out = net(torch.randn(64, 30))
    (out.pow(2).mean() + net.param("wide.bias").sum()).backward()
    params = dict(net.params())
    params["head.bias"].grad = None  # a parameter without a gradient this step
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    before = {n: p.detach().clone() for n, p in params.items()}
    c.before_step(None)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.01)
    m = c.after_step(3, 1.0, [0.1]).metrics
    for n, w in params.items():
        w = w.detach()
        assert m[f"weight_mean/{n}"] == pytest.approx(w.mean().item(), rel=1e-5, abs=1e-7)
        if w.numel() == 1:  # a single value has no spread: no std, min or max
            assert not {f"weight_std/{n}", f"weight_min/{n}", f"weight_max/{n}"} & set(m)
        else:
            assert m[f"weight_std/{n}"] == pytest.approx(w.std().item(), rel=1e-4, abs=1e-6)
            assert m[f"weight_min/{n}"] == w.min().item() and m[f"weight_max/{n}"] == w.max().item()
        assert m[f"weight_norm/{n}"] == pytest.approx(w.norm().item(), rel=1e-5)
        ratio = (w - before[n]).norm() / w.norm()
        assert m[f"update_ratio/{n}"] == pytest.approx(ratio.item(), rel=1e-4)
    assert m["weight_std/head.weight"] < 1e-6  # a constant tensor: rounding noise at most
    for n, g in grads.items():
        assert m[f"grad_mean/{n}"] == pytest.approx(g.mean().item(), rel=1e-4, abs=1e-8)
        assert m[f"grad_std/{n}"] == pytest.approx(g.std().item(), rel=1e-4, abs=1e-6)
        assert m[f"grad_maxabs/{n}"] == g.abs().max().item()
        assert m[f"grad_norm/{n}"] == pytest.approx(g.norm().item(), rel=1e-5)
    assert not any(k.endswith("/head.bias") and k.startswith("grad_") for k in m)
    total = torch.stack([g.norm() for g in grads.values()]).norm().item()
    assert m["train/grad_norm"] == pytest.approx(total, rel=1e-5)
    logged = c.after_step  # samples: 16 per tensor (all of a smaller one), taken from the tensor itself
    c.before_step(1.0)
    samples = {k: v.tolist() for k, v in logged(4, 1.0, [0.1]).sample_series().items()}
    w = params["big.weight"].detach().reshape(-1)
    assert len(samples["weight/big.weight"]) == 16 and set(samples["weight/big.weight"]) <= set(w.tolist())
    assert sorted(samples["weight/head.bias"]) == sorted(params["head.bias"].detach().reshape(-1).tolist())


def test_heat_map_history_stays_bounded_and_spans_the_whole_run():
    from runner.tracking.tracker import MAX_COLUMNS, Tracker

    class Recorder:
        def __init__(self):
            self.maps = {}

        def log(self, metrics, step):
            pass

        def review(self, review):
            self.maps = review["series"]

    net = runner.build(model="d2l_mlp")
    sink = Recorder()
    tracker = Tracker(StatsCollector(net, {"every_n_steps": 1, "histograms": {"sample": 8}}), sink,
                      {"every_n_steps": 1, "histograms": {"sample": 8}})
    net(torch.rand(4, 4)).sum().backward()
    steps = 5 * MAX_COLUMNS
    for step in range(1, steps + 1):
        tracker.before_step(None)
        tracker.after_step(step, 0.0, [0.1])
        assert len(tracker.history) < 2 * MAX_COLUMNS
    tracker.finish(steps)
    kept, series = sink.maps["weight/hidden.weight"]
    assert len(kept) >= MAX_COLUMNS and kept == sorted(kept)
    assert kept[0] <= 8 and kept[-1] >= steps - 8  # from the start to the end of the run
    b = net.param("hidden.bias").detach()  # 4 values, fewer than the 8 sampled: all of them, in order
    assert torch.equal(torch.as_tensor(sink.maps["weight/hidden.bias"][1][-1]), b.to(torch.bfloat16).float())


def test_key_budget_is_enforced(store, tmp_path):
    r = train(store, tmp_path, "tracking.max_keys=10")
    # 4 tensors x (weight std, norm; grad norm, maxabs; update ratio), less the 1-value output
    # bias's std, and train/loss, grad_norm, lr
    assert r.returncode == 2 and f"tracking.max_keys: this model would log {4 * 5 - 1 + 3} metric keys" in r.stderr


def test_train_config_errors_are_reported_together(store, tmp_path):
    r = train(store, tmp_path, "train.optimizer=adamm", "train.lr=-1", "tracking.stats.grads=[norm,nrom]",
              "tracking.every_n_steps=null", "checkpoint.keep_last=null", "checkpoint.keep_best=-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "tracking.every_n_steps: must be a positive integer, got None" in r.stderr
    assert "checkpoint.keep_last: must be a positive integer, got None" in r.stderr
    assert "checkpoint.keep_best: must be a non-negative integer, got -1" in r.stderr
    assert "train.optimizer: unknown optimizer 'adamm' (did you mean 'adam'?)" in r.stderr
    assert "train.lr: must be a positive number, got -1" in r.stderr
    assert "tracking.stats.grads: unknown statistic 'nrom' (did you mean 'norm'?)" in r.stderr


@pytest.mark.parametrize("data, extra", [("digits", ["model=mlp_wide"]), ("classification", ["model=mlp_wide", "model.layers.2.out=3"])])
def test_classification_reports_accuracy(store, tmp_path, data, extra):
    r = train(store, tmp_path, f"data={data}", "train.epochs=2", "train.schedule=cosine", "train.grad_clip=1.0", *extra)
    assert r.returncode == 0, r.stderr
    metrics = store.metrics(store.only_run())
    assert 0 <= metrics["val/accuracy"] <= 1 and metrics["val/accuracy"] > 0.3


def test_tracking_disabled_trains_without_mlflow(tmp_path):
    r = run_cli("tracking.enabled=false", "train.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    assert "tracking disabled" in r.stdout
    assert (tmp_path / "run" / "init_report.json").is_file()


def test_a_dead_writer_never_stalls_training_and_is_reported(store):
    exp = store.client.create_experiment("dead-writer")
    run_id = store.client.create_run(exp).info.run_id
    sink = MlflowSink(store.uri, run_id, queue_size=2)
    sink.wait_ready()
    sink._proc.kill()
    sink._proc.wait()
    t0 = time.time()
    for step in range(1, 201):
        sink.log({"train/loss": float(step)}, step)
    report = sink.close(timeout=10)
    assert time.time() - t0 < 30
    assert report.lost == 200 and report.delivered == 0
    assert any("writer" in e for e in report.errors)


def test_a_resumed_run_delivers_its_predecessors_spool_but_keeps_its_own_status(store, tmp_path):
    """A killed part of the run left values and a deferred KILLED status in its spool: the resumed
    part delivers the values while it trains, and stays RUNNING until its own end."""
    from runner.tracking.spool import append

    run_id = store.client.create_run(store.client.create_experiment("resumed")).info.run_id
    spool = tmp_path / "mlflow_spool.jsonl"
    append(spool, {"run_id": run_id, "metrics": [["train/loss", 0.5, 1000, 1], ["train/loss", 0.25, 1001, 2]]})
    append(spool, {"run_id": run_id, "status": "KILLED"})
    sink = MlflowSink(store.uri, run_id)
    sink.replay([str(spool)])
    report = sink.close(timeout=60)
    assert any("delivered 2 value(s)" in n for n in report.notes), report
    assert [m.value for m in store.client.get_metric_history(run_id, "train/loss")] == [0.5, 0.25]
    assert store.client.get_run(run_id).info.status == "RUNNING"


def test_values_left_in_the_spool_are_delivered_once_by_the_replay_command(store, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from runner.tracking.sink import _Writer

    run_id = store.client.create_run(store.client.create_experiment("spooled")).info.run_id
    # the writer meets a store that refuses connections for the whole run: everything is spooled
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    spool = tmp_path / "run" / "mlflow_spool.jsonl"
    spool.parent.mkdir()
    writer = _Writer(MlflowClient("http://127.0.0.1:9"), run_id, str(spool), drain_seconds=0)
    items = [("metrics", step, 1000 + step, {"train/loss": 1.0 / step, "weight_norm/w": float(step)})
             for step in range(1, 1201)]
    writer.handle(items[:700])
    writer.handle(items[700:])
    writer.drain()
    assert writer.delivered == 0 and "2400 metric values could not be delivered" in writer.errors[0]
    assert f"they are kept in {spool}" in writer.errors[0]  # the closing lines add the replay command
    # some values reached the store another way before the replay (a partly delivered spool)
    store.client.log_batch(run_id, metrics=[Metric("train/loss", 1.0 / s, 1000 + s, s) for s in range(1, 101)])

    def replay(*args):
        return subprocess.run([sys.executable, "-m", "runner.tracking.spool", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    r = replay(str(spool), "--tracking-uri", store.uri)
    assert r.returncode == 0, r.stderr
    assert "2300 values delivered" in r.stdout and "100 were already there" in r.stdout
    for key, value in (("train/loss", lambda s: 1.0 / s), ("weight_norm/w", float)):
        history = store.client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, 1201))  # each step once
        assert all(m.value == pytest.approx(value(m.step)) for m in history)
    again = replay(str(spool), "--tracking-uri", store.uri)
    assert again.returncode == 0 and "0 values delivered" in again.stdout and "2400 were already there" in again.stdout
    lines = spool.read_text().splitlines()
    spool.write_text("\n".join(lines + ["not json", '{"run_id": "x", "metr'] + [""]))  # last line: cut short
    bad = replay(str(spool), "--tracking-uri", store.uri)
    assert bad.returncode == 2 and f"mlflow_spool.jsonl:{len(lines) + 1}: not a spool record" in bad.stderr
    spool.write_text("\n".join(lines + ['{"run_id": "x", "metr']))  # only a cut-short last line: skipped
    cut = replay(str(spool), "--tracking-uri", store.uri)
    assert cut.returncode == 0 and "0 values delivered" in cut.stdout, cut.stderr
    assert "Traceback" not in bad.stderr
