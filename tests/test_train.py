"""Training end to end against a real MLflow sqlite store, read back with MlflowClient."""
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

import runner
from conftest import REPO, run_cli
from runner.tracking.run import TrackedRun
from runner.tracking.sink import MlflowSink
from runner.tracking.stats import StatsCollector

pytestmark = pytest.mark.slow

WEIGHT = ["weight_mean", "weight_std", "weight_min", "weight_max", "weight_norm"]
GRAD = ["grad_mean", "grad_std", "grad_maxabs", "grad_norm"]


def train(store, tmp_path, *args):
    return run_cli(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}", "train.progress=quiet",
                   "tracking.system_metrics=false", *args)


def test_short_run_logs_every_stat_for_every_parameter_at_the_expected_steps(store, tmp_path):
    r = train(store, tmp_path, "train.epochs=2", "tracking.every_n_steps=5", "tracking.activations=true",
              "init=d2l_normal")
    assert r.returncode == 0, r.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED"
    c = store.client
    steps_per_epoch = math.ceil(512 * 0.8 / 32)
    total = 2 * steps_per_epoch
    expected = [1] + [s for s in range(5, total + 1, 5)]
    for p in ("hidden.weight", "hidden.bias", "output.weight", "output.bias"):
        for stat in WEIGHT + GRAD + ["update_ratio"]:
            hist = c.get_metric_history(run.info.run_id, f"{stat}/{p}")
            assert [m.step for m in hist] == expected, (stat, p)
    for layer in ("hidden", "output", "flatten"):
        assert [m.step for m in c.get_metric_history(run.info.run_id, f"act_mean/{layer}")] == expected
    assert "act_dead/hidden" in run.data.metrics and "act_dead/output" not in run.data.metrics
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == expected
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val/loss")] == [steps_per_epoch, total]
    # params: the flattened resolved config; tags: overrides, group choices
    assert run.data.params["model.name"] == "d2l_mlp"
    assert run.data.params["model.layers.1.activation"] == "relu"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["runner.init"] == "d2l_normal"
    assert "train.epochs=2" in run.data.tags["runner.overrides"]
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"summary.txt", "init_report.json", "tie_map.json", "config.yaml", "hydra", "images"} <= artifacts
    assert {a.path for a in c.list_artifacts(run.info.run_id, "hydra")} >= {"hydra/config.yaml", "hydra/overrides.yaml"}
    images = [a.path for a in c.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    for p in ("hidden.weight", "output.bias"):
        assert any(f"hist_weight~{p}+step+{total}" in i for i in images), images
        assert any(f"hist_grad~{p}+step+{total}" in i for i in images)
    # the closing message says where the run is and how to look at it
    assert f"run {run.info.run_id} (FINISHED)" in r.stdout
    assert f"mlflow ui --backend-store-uri '{store.uri}' --host 127.0.0.1" in r.stdout
    delivered = sum(len(c.get_metric_history(run.info.run_id, k)) for k in run.data.metrics)
    assert f"metrics: {delivered}/{delivered} delivered" in r.stdout


def test_tied_model_logs_one_entry_per_group(store, tmp_path):
    r = train(store, tmp_path, "model=d2l_tied", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    keys = set(store.only_run().data.metrics)
    assert "weight_norm/shared.weight" in keys and "grad_norm/shared.weight" in keys
    assert not any("shared_again" in k for k in keys)


def test_nan_in_data_hits_the_nonfinite_policy_and_fails_the_run(store, tmp_path):
    r = train(store, tmp_path, "+data.nan_at=0", "data.shuffle=false", "train.nonfinite.policy=abort")
    assert r.returncode == 2
    import re

    assert re.search(r"training stopped: non-finite loss at step \d+ \(epoch 0, batch \d+\) "
                     r"\(1 bad step\(s\) in a row", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert store.only_run().info.status == "FAILED"


def test_skip_policy_skips_and_counts_and_keeps_weights_finite(store, tmp_path):
    r = train(store, tmp_path, "+data.nan_at=3", "train.nonfinite.policy=skip", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    run = store.only_run()
    hist = store.client.get_metric_history(run.info.run_id, "train/nonfinite_steps")
    assert [m.value for m in hist] == [1.0, 2.0, 3.0]  # the bad sample sits in one batch per epoch
    assert all(math.isfinite(v) for k, v in run.data.metrics.items() if k.startswith("weight_"))
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


def test_sigterm_ends_the_run_killed(store, tmp_path):
    cmd = [sys.executable, "-m", "runner", f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}",
           "train.progress=quiet", "tracking.system_metrics=false", "train.epochs=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = store.runs()
            if runs and runs[0].info.status == "RUNNING" and "train/loss" in store.client.get_run(runs[0].info.run_id).data.metrics:
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


def test_key_budget_is_enforced(store, tmp_path):
    r = train(store, tmp_path, "tracking.max_keys=10")
    assert r.returncode == 2 and "tracking.max_keys: this model would log 43 metric keys" in r.stderr


def test_train_config_errors_are_reported_together(store, tmp_path):
    r = train(store, tmp_path, "train.optimizer=adamm", "train.lr=-1", "tracking.stats.grads=[norm,nrom]")
    assert r.returncode == 2
    assert "train.optimizer: unknown value 'adamm' (did you mean 'adam'?)" in r.stderr
    assert "train.lr: must be a positive number, got -1" in r.stderr
    assert "tracking.stats.grads: unknown statistic 'nrom' (did you mean 'norm'?)" in r.stderr


@pytest.mark.parametrize("data, extra", [("digits", ["model=mlp_wide"]), ("classification", ["model=mlp_wide", "model.layers.2.out=3"])])
def test_classification_reports_accuracy(store, tmp_path, data, extra):
    r = train(store, tmp_path, f"data={data}", "train.epochs=2", "train.schedule=cosine", "train.grad_clip=1.0", *extra)
    assert r.returncode == 0, r.stderr
    metrics = store.only_run().data.metrics
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
