"""Data-parallel training with torchrun: 2 processes on CPU (gloo) match one process."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli
from runner.checkpoint.checkpointer import find_entry
from runner.checkpoint.weights import read_weights

pytestmark = pytest.mark.slow

ARGS = ["train.progress=quiet", "tracking.system_metrics=false", "train.epochs=2", "model=d2l_tied",
        "tracking.histograms.enabled=false", "checkpoint.register=false", "data.batch_size=30", "train.grad_clip=0.5"]


def test_two_process_torchrun_matches_single_process_and_only_rank0_logs(store, tmp_path):
    single = run_cli(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'single'}", "tracking.experiment=single", *ARGS)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "runner", f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'ddp'}",
                          "tracking.experiment=ddp", *ARGS], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = read_weights(find_entry(tmp_path / "single").path / "weights.safetensors")[0]
    b = read_weights(find_entry(tmp_path / "ddp").path / "weights.safetensors")[0]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    run = store.only_run("ddp")  # one run, from rank 0
    assert run.info.status == "FINISHED"
    ref = store.only_run("single")
    steps = [m.step for m in store.client.get_metric_history(run.info.run_id, "grad_norm/shared.weight")]
    assert steps == [m.step for m in store.client.get_metric_history(ref.info.run_id, "grad_norm/shared.weight")]
    for key in ("train/grad_norm", "grad_norm/shared.weight", "val/loss"):
        x = [m.value for m in store.client.get_metric_history(run.info.run_id, key)]
        y = [m.value for m in store.client.get_metric_history(ref.info.run_id, key)]
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6), key
