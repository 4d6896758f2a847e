"""Data-parallel training with torchrun on CPU (gloo): DDP and FSDP2 match one process, killed runs
resume, only rank 0 logs."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli
from runner.checkpoint.checkpointer import find_entry
from runner.checkpoint.weights import read_weights

pytestmark = pytest.mark.slow

# digits with 1409 training images: 22 batches of 64, then a last batch of one image (fewer than
# the processes: both take it, as DistributedSampler would)
CONF = ["--config-dir", str(REPO / "tests" / "conf")]  # options before the overrides
ARGS = ["model=dist_probe", "data=digits", "data.val_fraction=0.21592",
        "train.epochs=2", "train.grad_clip=1.0", "train.progress=quiet", "tracking.system_metrics=false",
        "tracking.histograms.enabled=false", "checkpoint.register=false"]


def torchrun(store, run_dir, *args, env=None):
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "runner", *CONF, f"tracking.uri={store.uri}", f"hydra.run.dir={run_dir}", *ARGS, *args],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def single(tmp_path_factory, template_db):
    """The reference: one process on the same global batches."""
    import shutil

    from conftest import Store

    root = tmp_path_factory.mktemp("single")
    (root / "outputs").mkdir()
    shutil.copy(template_db, root / "outputs" / "mlflow.db")
    store = Store(root / "outputs" / "mlflow.db")
    r = run_cli(*CONF, f"tracking.uri={store.uri}", f"hydra.run.dir={root / 'run'}", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    run = store.only_run()
    history = {k: [m.value for m in store.history(run, k)]
               for k in ("train/loss", "grad_norm/blocks.block-0.weight", "grad_norm/bn.weight", "val/loss")}
    return read_weights(find_entry(root / "run").path / "weights.safetensors")[0], history


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_killed_then_resumed_data_parallel_run_matches_one_process(store, tmp_path, single, strategy):
    expected, history = single
    run_dir = tmp_path / strategy
    crashed = torchrun(store, run_dir, f"train.strategy={strategy}", env={"RUNNER_FAULT": "checkpoint:latest:23"})
    assert crashed.returncode != 0 and "rank" in crashed.stderr  # rank 0 was killed after its first checkpoint
    resumed = torchrun(store, run_dir, f"train.strategy={strategy}", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    got = read_weights(find_entry(run_dir).path / "weights.safetensors")[0]
    assert got.keys() == expected.keys()
    for k, want in expected.items():
        if k.endswith("running_var"):  # the padded last batch counts one image twice in the variance
            assert torch.allclose(got[k], want, rtol=1e-2), k
        else:
            assert torch.allclose(got[k].float(), want.float(), rtol=1e-4, atol=1e-5), k
    run = store.only_run()  # only rank 0 logs, and the resumed run is the same MLflow run
    assert run.info.status == "FINISHED"
    for key, want in history.items():
        values = [m.value for m in store.history(run, key)]
        assert values == pytest.approx(want, rel=1e-4, abs=1e-6), key
