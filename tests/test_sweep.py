"""Sweeps: a parent run per sweep, a child run per job, failures isolated, a closing table."""
import pytest

from conftest import metrics, run_cli

pytestmark = pytest.mark.slow

COMMON = ["train.progress=quiet", "tracking.system_metrics=false", "train.epochs=1",
          "tracking.histograms.enabled=false", "checkpoint.register=false"]


def sweep(tmp_path, uri, *args):
    return run_cli("-m", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *COMMON, *args)


def test_parallel_joblib_sweep_on_a_fresh_store_nests_every_job_under_one_parent(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not migrated yet: the launcher must do it once
    r = sweep(tmp_path, uri, "hydra/launcher=joblib", "hydra.launcher.n_jobs=3",
              "train.lr=0.1,0.03,0.01", "init=d2l_normal,default")
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("runner")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("runner.sweep") == "parent"]
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 6
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children) and parents[0].info.status == "FINISHED"
    names = {c.info.run_name for c in children}
    assert "train.lr=0.1,init=d2l_normal" in names
    default = client.get_experiment_by_name("Default")
    assert default is None or not client.search_runs([default.experiment_id])
    # the closing table lists every job, best validation loss first
    assert "Sweep: 6 jobs, best val/loss first" in r.stdout
    best = min(children, key=lambda c: metrics(c)["val/loss"])
    assert parents[0].data.tags["runner.best_run"] == best.info.run_id
    table = [line for line in r.stdout.splitlines() if line.startswith("│")]
    assert best.info.run_id in table[0]
    # the parent compares its children: their final metrics by job number, and the table as artifacts
    jobs = client.get_metric_history(parents[0].info.run_id, "jobs/val/loss")
    assert sorted(m.step for m in jobs) == list(range(6))
    assert min(m.value for m in jobs) == metrics(best)["val/loss"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.html"} <= artifacts
    csv_rows = (tmp_path / "sweep" / "sweep_summary.csv").read_text().splitlines()
    assert len(csv_rows) == 7 and best.info.run_id in csv_rows[1]


def test_a_failing_job_ends_failed_while_the_others_finish(store, tmp_path):
    r = sweep(tmp_path, store.uri, "train.lr=0.01,1e30", "train.nonfinite.policy=abort", "data.seed=5")
    assert r.returncode == 1
    assert "error in job 1" in r.stderr and "non-finite" in r.stderr
    assert "Traceback" not in r.stderr
    runs = store.runs()
    children = {x.data.tags.get("runner.overrides", ""): x for x in runs if x.data.tags.get("mlflow.parentRunId")}
    statuses = sorted(c.info.status for c in children.values())
    assert statuses == ["FAILED", "FINISHED"]
    parent = next(x for x in runs if x.data.tags.get("runner.sweep") == "parent")
    assert parent.info.status == "FAILED"
    # data.seed is in no data preset (it goes to Hydra as ++data.seed=5); the tags say it as typed
    for run in (parent, *children.values()):
        assert "data.seed=5" in run.data.tags["runner.overrides"] and "++" not in run.data.tags["runner.overrides"]
    assert "1 of 2 jobs failed" in r.stderr


def test_inspect_sweeps_need_no_store(tmp_path):
    r = run_cli("-m", "task=inspect", "model=d2l_mlp,d2l_tied", f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    assert "Sweep: 2 jobs" in r.stdout


def test_optuna_sweeper_trials_are_child_runs_and_the_objective_is_the_validation_loss(store, tmp_path):
    r = sweep(tmp_path, store.uri, "hydra/sweeper=optuna_lr", "hydra.sweeper.n_trials=3")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = store.runs()
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.info.run_name.startswith("train.lr=") for c in children)  # named from what Optuna chose
    best = min(children, key=lambda c: metrics(c)["val/loss"])
    assert f"Best value: {metrics(best)['val/loss']}"[:18] in r.stdout


def test_submitit_local_sweep(store, tmp_path):
    r = sweep(tmp_path, store.uri, "hydra/launcher=submitit_local", "train.lr=0.1,0.01")
    assert r.returncode == 0, r.stderr[-3000:]
    children = [x for x in store.runs() if x.data.tags.get("mlflow.parentRunId")]
    assert sorted(c.info.run_name for c in children) == ["train.lr=0.01", "train.lr=0.1"]
    assert all(c.info.status == "FINISHED" for c in children)
