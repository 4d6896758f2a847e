"""The architecture presets end to end through the real CLI: train, track, checkpoint, resume
bitwise (buffers included), register, runner-weights; a user's own module; a wheel install."""
import os
import signal
import subprocess
import sys
import venv

import pytest
import torch

from conftest import REPO, run_cli, run_main, weights_cli
from runner.checkpoint.checkpointer import find_entry
from runner.checkpoint.weights import read_weights

pytestmark = pytest.mark.slow

QUIET = ["train.progress=quiet", "tracking.system_metrics=false", "tracking.histograms.enabled=false"]
GPT = ["experiment=char_gpt", "model.vars.dim=32", "model.vars.n_layer=2", "model.vars.heads=2", "data.max_chars=30000",
       "data.block_size=32", "data.steps_per_epoch=6", "train.epochs=2", "tracking.every_n_steps=3"]
CNN = ["experiment=digits_cnn", "train.epochs=2"]


def train(store, run_dir, *args, env=None):
    args = [f"tracking.uri={store.uri}", f"hydra.run.dir={run_dir}", *QUIET, *args]
    return run_cli(*args, env=env) if env else run_main(*args)  # a fault kills a process of its own


def final(run_dir):
    return read_weights(find_entry(run_dir).path / "weights.safetensors")


@pytest.mark.parametrize("preset, args, crash_step", [("cnn", CNN, 23), ("gpt", GPT, 6)])
def test_preset_trains_tracks_resumes_bitwise_and_registers(store, tmp_path, preset, args, crash_step):
    ref = train(store, tmp_path / "ref", *args, "tracking.experiment=ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected, meta = final(tmp_path / "ref")
    run = store.only_run("ref")
    metrics = store.metrics(run)
    if preset == "cnn":
        assert {"bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"} <= set(expected)
        assert "weight_norm/conv1.weight" in metrics and "grad_norm/bn2.bias" in metrics
        assert not any("running" in k for k in metrics)  # buffers are state, not trained: no statistics
        name = "digits_cnn"
    else:
        assert "head.weight" not in expected and "tok.weight" in expected  # the tie: stored once
        assert "grad_norm/tok.weight" in metrics and not any("head.weight" in k for k in metrics)
        assert 0 < metrics["val/unigram_loss"] and "(unigram loss" in ref.stdout
        samples = store.client.download_artifacts(run.info.run_id, "samples.txt", str(tmp_path))
        assert len(open(samples, encoding="utf-8").read().splitlines()) == 8
        name = "char_gpt"
    assert f"weights: models:/{name}/1" in ref.stdout
    # killed right after a checkpoint, then resumed: bitwise the uninterrupted run, buffers included
    crashed = train(store, tmp_path / "crash", *args, "tracking.experiment=crash",
                    env={"RUNNER_FAULT": f"checkpoint:latest:{crash_step}"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = train(store, tmp_path / "crash", *args, "tracking.experiment=crash", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    got, _ = final(tmp_path / "crash")
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    # runner-weights on the registered versions
    r = weights_cli(store, "show", f"models:/{name}/1")
    assert r.returncode == 0, r.stderr
    if preset == "cnn":
        assert "bn1.running_var" in r.stdout and "buffer" in r.stdout
    else:
        assert "head.weight" in r.stdout  # listed as the alias of tok.weight
    r = weights_cli(store, "diff", f"models:/{name}/1", f"models:/{name}/latest")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "w.safetensors"
    r = weights_cli(store, "export", f"models:/{name}/latest", "--out", str(out))
    assert r.returncode == 0, r.stderr
    exported, _ = read_weights(out)
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


def test_digits_cnn_defaults_reach_95_percent(tmp_path):
    r = run_main("experiment=digits_cnn", "tracking.enabled=false", "checkpoint.enabled=false", "train.progress=quiet",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    accuracy = float(r.stdout.split("val/accuracy ")[-1].split()[0].rstrip(","))
    assert accuracy >= 0.95, r.stdout


def test_a_user_module_and_a_user_model_train_through_the_cli(store, tmp_path):
    for model in ("digits_se", "digits_user_model"):
        r = train(store, tmp_path / model, f"model={model}", "data=digits", "train.epochs=1",
                  f"tracking.experiment={model}", "tracking.activations=true")
        assert r.returncode == 0, r.stderr[-3000:]
        metrics = store.metrics(store.only_run(model))
        key = "se.excite.weight"
        assert f"grad_norm/{key}" in metrics and f"weight_std/{key}" in metrics
        assert any(k.startswith("act_mean/se.") for k in metrics)
        assert key in read_weights(find_entry(tmp_path / model).path / "weights.safetensors")[0]


def test_bad_fields_of_new_layer_types_end_with_the_usual_error(tmp_path):
    r = run_main("task=inspect", "model=digits_cnn", "data=digits", f"hydra.run.dir={tmp_path}",
                 "model.layers.1.kernel=0", "+model.layers.2.momentum=-1", "model.layers.7.type=maxpol",
                 "+model.layers.9.pp=0.1")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "(4 problems)" in r.stderr
    for line in ("model.layers[1].kernel: must be a positive integer or a list of them, got 0",
                 "model.layers[2].momentum: must be a number in (0, 1] or null, got -1",
                 "model.layers[7].type: unknown layer type 'maxpol' (did you mean 'maxpool'?)",
                 "model.layers[9].pp: unknown key for 'dropout' (did you mean 'p'?)"):
        assert line in r.stderr


def test_a_wheel_installed_in_a_fresh_environment_runs_with_its_configs_and_your_own(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # torch, mlflow, ... from here
    py = env_dir / "bin" / "python"
    wheel = next(wheels.glob("runner-*.whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--force-reinstall",
                        "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "project"  # the user's own project: presets beside their own module
    (work / "conf" / "model").mkdir(parents=True)
    (work / "mynet.py").write_text("import torch\n\nclass Net(torch.nn.Module):\n"
                                   "    def __init__(self, width):\n        super().__init__()\n"
                                   "        self.body = torch.nn.Linear(4, width)\n\n"
                                   "    def forward(self, x):\n        return self.body(x)\n")
    (work / "conf" / "model" / "mine.yaml").write_text("name: mine\n_target_: mynet.Net\nwidth: 3\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    where = subprocess.run([str(py), "-c", "import runner, runner.conf; print(runner.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert str(env_dir) in where.stdout, (where.stdout, where.stderr)  # the installed copy, not the checkout
    r = subprocess.run([str(env_dir / "bin" / "runner"), "task=inspect", "model=d2l_nested",
                        f"hydra.run.dir={tmp_path / 'a'}"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Total params: 85" in r.stdout
    r = subprocess.run([str(env_dir / "bin" / "runner"), "--config-dir", "conf", "task=inspect", "model=mine",
                        f"hydra.run.dir={tmp_path / 'b'}"], cwd=work, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "body.weight" in r.stdout and "Total params: 15" in r.stdout
    # 3 outputs on the chapter's 1-target data: shown, with what training would refuse
    assert ("note: model: outputs 3 value(s) per sample, but the data's targets have 1; make the module's output "
            "1 value(s) per sample") in r.stdout
