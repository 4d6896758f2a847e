"""Against a real MLflow tracking server backed by PostgreSQL: sweeps, and surviving an outage."""
import subprocess
import sys
import time

import pytest

from conftest import REPO, history, metrics, run_cli
from runner.tracking.sink import FLUSH_SECONDS

pytestmark = pytest.mark.slow

COMMON = ["tracking=server", "train.progress=quiet", "tracking.system_metrics=false",
          "tracking.histograms.enabled=false", "checkpoint.register=false"]


def client(server):
    from mlflow import MlflowClient

    return MlflowClient(server.uri)


def test_parallel_sweep_against_the_postgres_backed_server(tracking_server, tmp_path):
    r = run_cli("-m", f"tracking.uri={tracking_server.uri}", "tracking.experiment=server-sweep", *COMMON,
                "train.epochs=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "train.lr=0.1,0.03,0.01",
                "init=d2l_normal,default", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr[-3000:]
    c = client(tracking_server)
    runs = c.search_runs([c.get_experiment_by_name("server-sweep").experiment_id])
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 6 and all(x.info.status == "FINISHED" for x in children)
    assert len([x for x in runs if x.data.tags.get("runner.sweep") == "parent"]) == 1


def start_logging_run(server, experiment: str, *args: str) -> subprocess.Popen:
    """A training run in a subprocess, returned once the server holds its first loss value."""
    cmd = [sys.executable, "-m", "runner", f"tracking.experiment={experiment}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    c = client(server)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        exp = c.get_experiment_by_name(experiment)
        runs = c.search_runs([exp.experiment_id]) if exp else []
        if runs and "train/loss" in metrics(runs[0]):
            return proc
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the run never logged: {proc.communicate()[1][-2000:]}")


def test_a_server_outage_mid_run_loses_no_metric(tracking_server, tmp_path):
    proc = start_logging_run(tracking_server, "outage", f"tracking.uri={tracking_server.uri}", *COMMON,
                             "train.epochs=40", "tracking.every_n_steps=5", f"hydra.run.dir={tmp_path / 'run'}")
    c = client(tracking_server)
    tracking_server.stop()   # the server goes away for longer than the writer holds a batch
    time.sleep(FLUSH_SECONDS + 1)
    tracking_server.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    run = c.search_runs([c.get_experiment_by_name("outage").experiment_id])[0]
    assert run.info.status == "FINISHED"
    steps_per_epoch = 13
    total = 40 * steps_per_epoch
    expected = [1] + list(range(5, total + 1, 5))
    for key in ("train/loss", "weight_norm/hidden.weight", "grad_norm/output.bias"):
        assert [m.step for m in history(c, run, key)] == expected, key
    assert [m.step for m in history(c, run, "val/loss")] == list(
        range(steps_per_epoch, total + 1, steps_per_epoch))
    delivered = out.split("metrics: ")[1].split(" delivered")[0]
    queued_ok, queued = delivered.split("/")
    assert queued_ok == queued
    assert "store outage(s) bridged" in out  # the writer did meet the outage, and spooled through it
    spool = (tmp_path / "run" / "mlflow_spool.jsonl").read_text().splitlines()
    assert len(spool) >= 2 and spool[-1].endswith('"delivered": true}')


def test_a_server_down_as_training_ends_defers_everything_to_the_replay(tracking_server, tmp_path):
    """The server goes away before training ends and stays down past the drain time: training's
    outcome decides the exit status, the closing lines name the replay command, and once the
    server is back the replay delivers every value, the heat maps, the registry version and the
    run's final status."""
    run_dir = tmp_path / "run"
    with_password = tracking_server.uri.replace("http://", "http://runner:hunter2@")
    proc = start_logging_run(tracking_server, "gone", f"tracking.uri={with_password}", "train.progress=quiet",
                             "tracking.system_metrics=false", "train.epochs=20", "tracking.every_n_steps=5",
                             "tracking.drain_timeout_s=2", "checkpoint.registered_name=gone-model",
                             f"hydra.run.dir={run_dir}")
    c = client(tracking_server)
    tracking_server.stop()  # ... and it stays down until the runner has exited
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        tracking_server.start()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    spool = run_dir / "mlflow_spool.jsonl"
    command = f"python -m runner.tracking.spool {spool}"
    assert command in out + err, (out[-2000:], err[-2000:])
    kept = out.split("kept for later: ")[1].split(". Once")[0]
    assert "metric values" in kept and "register" in kept and "status" in kept, kept
    run = c.search_runs([c.get_experiment_by_name("gone").experiment_id])[0]
    assert run.info.status == "RUNNING"  # the final status waits in the spool with the rest
    # the password in the URI is nowhere: not printed, logged as a param or tag, or saved
    assert "hunter2" not in out + err
    assert not [f for f in run_dir.rglob("*") if f.is_file() and b"hunter2" in f.read_bytes()]
    assert not c.search_model_versions("name='gone-model'")

    r = subprocess.run([sys.executable, "-m", "runner.tracking.spool", str(spool),
                        "--tracking-uri", tracking_server.uri], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = c.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if "hunter2" in v]
    assert run.data.params["tracking.uri"] == with_password.replace("hunter2", "***")
    steps_per_epoch, total = 13, 20 * 13
    assert [m.step for m in history(c, run, "train/loss")] == [1] + list(range(5, total + 1, 5))
    assert [m.step for m in history(c, run, "val/loss")] == list(range(steps_per_epoch, total + 1, steps_per_epoch))
    versions = c.search_model_versions("name='gone-model'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"heatmaps", "checkpoints", "report.html"} <= artifacts, artifacts
    assert {a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")} >= {"checkpoints/final"}
    heatmaps = [a.path for kind in c.list_artifacts(run.info.run_id, "heatmaps")
                for a in c.list_artifacts(run.info.run_id, kind.path)]
    assert any(p.endswith(".png") for p in heatmaps)
