"""Checkpoints: tie-aware round trips, crash safety and exact resume, untrusted input, registry."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import runner
from conftest import REPO, run_cli, run_main, weights_cli
from runner.checkpoint.checkpointer import find_entry, load_checkpoint
from runner.checkpoint.state import load_state
from runner.checkpoint.store import CheckpointStore, verify
from runner.checkpoint.weights import CheckpointError, load_into, read_weights, save_weights
from runner.errors import ConfigError


def fresh(model="d2l_tied", **kw):
    return runner.build(model=model, **kw)


# --- format -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, extra", [("d2l_tied", []), ("tied_autoencoder", []),
                                          ("d2l_nested", ["+model.ties=[{layers: ['body.*.dense']}]"])])
def test_tied_round_trip_stores_one_tensor_per_group_and_reties(tmp_path, model, extra):
    net = fresh(model, seed=1, overrides=extra)
    save_weights(tmp_path / "w.safetensors", net, step=7)
    stored = load_file(str(tmp_path / "w.safetensors"))
    assert sorted(stored) == sorted(net.params())  # canonical names only
    other = fresh(model, seed=2, overrides=extra)
    tensors, meta = read_weights(tmp_path / "w.safetensors")
    load_into(other, tensors, meta)
    for name, p in net.params().items():
        assert torch.equal(other.param(name), p)
    for alias, canonical in other.param_aliases().items():
        assert other.param(alias) is other.param(canonical)
    if model == "tied_autoencoder":
        assert torch.equal(other.param("decoder.weight"), other.param("encoder.weight").T)
    assert json.loads(meta["runner.tie_map"]) == runner.model.tie_map(net) and meta["runner.step"] == "7"


def test_a_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "state.pt", "wb") as f:
        pickle.dump({"optimizer": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused: it is not a plain training-state file"):
        load_state(tmp_path / "state.pt")
    torch.save({"x": Evil()}, tmp_path / "state2.pt")
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "state2.pt")
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "state.pt").read_bytes())
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_weights(tmp_path / "w.safetensors")
    assert not marker.exists()


def test_truncated_or_corrupted_files_are_refused(tmp_path):
    net = fresh("d2l_mlp")
    store = CheckpointStore(tmp_path)
    entry = store.save(3, lambda d: save_weights(d / "weights.safetensors", net, 3))
    w = entry.path / "weights.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        verify(entry.path)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_weights(w)
    assert store.latest() is None  # a corrupted entry is never taken as the latest
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="checksum"):
        verify(entry.path)


def test_nonfinite_values_contradicting_tie_maps_and_diverging_aliases_are_refused(tmp_path):
    net = fresh("d2l_mlp")
    tensors = {k: v.detach().clone() for k, v in net.params().items()}
    tensors["hidden.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite values .* hidden.bias"):
        load_into(fresh("d2l_mlp"), tensors, {})
    tied = fresh("d2l_tied")
    save_weights(tmp_path / "tied.safetensors", tied)
    t, meta = read_weights(tmp_path / "tied.safetensors")
    meta["runner.tie_map"] = json.dumps({"output.weight": {"aliases": ["shared.weight"], "transposed": []}})
    with pytest.raises(CheckpointError, match="contradicts the model"):
        load_into(fresh("d2l_tied"), t, meta)
    # a foreign file that stores both names of a tie group with different values
    foreign = {k: v.detach().clone() for k, v in tied.params().items()}
    foreign["shared_again.weight"] = foreign["shared.weight"] + 1
    with pytest.raises(CheckpointError, match="'shared_again.weight' and the tensor it is tied to .* hold different values"):
        load_into(fresh("d2l_tied"), foreign, {})
    foreign["shared_again.weight"] = foreign["shared.weight"].clone()
    load_into(fresh("d2l_tied"), foreign, {})  # equal aliases are fine


def test_shape_and_name_mismatches_are_listed(tmp_path):
    net = fresh("d2l_mlp")
    tensors = {k: v.detach().clone() for k, v in net.params().items()}
    tensors["hidden.weight"] = torch.zeros(3, 4)
    tensors["extra.weight"] = torch.zeros(1)
    del tensors["output.bias"]
    with pytest.raises(CheckpointError) as e:
        load_into(fresh("d2l_mlp"), tensors, {})
    text = str(e.value)
    assert "'hidden.weight' has shape [3, 4], the model [4, 4]" in text
    assert "has 'extra.weight', which the model does not have" in text and "lacks 'output.bias'" in text


# --- store ------------------------------------------------------------------------------------

def test_store_keeps_last_and_best_and_cleans_crash_leftovers(tmp_path):
    net = fresh("d2l_mlp")
    store = CheckpointStore(tmp_path, keep_last=2, keep_best=1, best_metric="val/loss")
    losses = {1: 0.5, 2: 0.1, 3: 0.4, 4: 0.3, 5: 0.6}
    for step, loss in losses.items():
        store.save(step, lambda d: save_weights(d / "weights.safetensors", net, step), {"val/loss": loss})
    assert [e.step for e in store.entries()] == [2, 4, 5]
    assert store.best().step == 2 and store.latest().step == 5
    assert (tmp_path / "latest").read_text().strip() == "step-00000005"
    (tmp_path / ".step-00000006.tmp-1").mkdir()
    (tmp_path / "step-00000007").mkdir()  # renamed but never committed
    assert sorted(store.clean()) == [".step-00000006.tmp-1", "step-00000007"]
    assert [e.step for e in store.entries()] == [2, 4, 5]


@pytest.mark.parametrize("stage, survivor", [("files", 1), ("manifest", 1), ("rename", 1), ("latest", 2)])
def test_a_sigkill_at_any_stage_of_a_write_leaves_an_intact_latest_entry(tmp_path, stage, survivor):
    """A process killed at each stage of writing step 2 (files written, manifest committed,
    entry renamed into place, latest pointer replaced): the latest entry verifies and loads, and
    the next start removes what the kill left half-written."""
    net = fresh("d2l_mlp")

    def write(step):
        return lambda d: (save_weights(d / "weights.safetensors", net, step), torch.save({"step": step}, d / "state.pt"))

    CheckpointStore(tmp_path).save(1, write(1))
    pid = os.fork()
    if pid == 0:  # the child writes step 2 and is killed by the fault hook at the stage
        try:
            os.environ["RUNNER_FAULT"] = f"checkpoint:{stage}:2"
            CheckpointStore(tmp_path).save(2, write(2))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    entry = find_entry(tmp_path)
    assert entry.step == survivor
    tensors, meta = read_weights(entry.path / "weights.safetensors")
    assert meta["runner.step"] == str(survivor) and load_state(entry.path / "state.pt") == {"step": survivor}
    store = CheckpointStore(tmp_path)
    store.clean()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert [e.step for e in store.entries()] == ([1] if stage in ("files", "manifest") else [1, 2])


# --- training: SIGKILL and exact resume -----------------------------------------------------

TRAIN = ["train.progress=quiet", "tracking.system_metrics=false", "train.epochs=3", "checkpoint.every_n_steps=4",
         "model=mlp_wide", "data=classification", "model.layers.2.out=3", "model.layers.1.times=1",
         "model.layers.1.block.layers.0.out=32", "tracking.histograms.enabled=false"]


def _train(store, run_dir, *extra, env=None):
    args = [f"tracking.uri={store.uri}", f"hydra.run.dir={run_dir}", *TRAIN, *extra]
    return run_cli(*args, env=env) if env else run_main(*args)  # a fault kills a process of its own


def _final_weights(run_dir: Path) -> dict:
    return read_weights(find_entry(run_dir).path / "weights.safetensors")[0]


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_gives_bitwise_the_same_weights_and_one_metric_per_step(store, tmp_path):
    ref = _train(store, tmp_path / "ref", "tracking.experiment=reference")
    assert ref.returncode == 0, ref.stderr
    expected = _final_weights(tmp_path / "ref")
    ref_run = store.only_run("reference")
    ref_loss = {m.step: m.value for m in store.history(ref_run, "train/loss")}
    # every stage of a write is killed in the store test above; here the whole run, through the CLI:
    # a kill before an entry is committed, after one is committed but not yet pointed to, and an
    # unplanned kill wherever training happens to be
    crashes = ["checkpoint:manifest:16", "checkpoint:latest:36", "timer"]
    for i, crash in enumerate(crashes):
        run_dir = tmp_path / f"crash{i}"
        exp = f"crash{i}"
        if crash == "timer":  # an unplanned kill, wherever training happens to be
            proc = subprocess.Popen([sys.executable, "-m", "runner", f"tracking.uri={store.uri}", f"hydra.run.dir={run_dir}",
                                     *TRAIN, f"tracking.experiment={exp}"], cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 120
            while time.time() < deadline and not (run_dir / "checkpoints" / "latest").exists():
                time.sleep(0.05)
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            r = _train(store, run_dir, f"tracking.experiment={exp}", env={"RUNNER_FAULT": crash})
            assert r.returncode == -signal.SIGKILL, (crash, r.stderr)
        r = _train(store, run_dir, f"tracking.experiment={exp}", "train.resume=auto")
        assert r.returncode == 0, (crash, r.stderr)
        assert "resuming from" in r.stdout or crash == "timer"
        got = _final_weights(run_dir)
        assert got.keys() == expected.keys()
        for k in expected:
            assert torch.equal(got[k], expected[k]), (crash, k)
        run = store.only_run(exp)
        assert run.info.status == "FINISHED"
        for key in ("train/loss", "weight_norm/body.layer-0.dense.weight", "val/loss"):
            steps = [m.step for m in store.history(run, key)]
            assert steps == sorted(set(steps)), (crash, key, steps)  # each step once
        history = {m.step: m.value for m in store.history(run, "train/loss")}
        assert history == ref_loss, crash
        assert not list((run_dir / "checkpoints").glob(".*tmp*"))


@pytest.mark.slow
def test_resume_by_run_id_and_by_path(store, tmp_path):
    r = _train(store, tmp_path / "a", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    run_id = store.only_run().info.run_id
    r = _train(store, tmp_path / "b", f"train.resume={run_id}", "train.epochs=2")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and store.only_run().info.run_id == run_id
    # the resumed run went on writing into the first run's checkpoint folder: 2 epochs of 13 batches
    assert find_entry(tmp_path / "a").step == 2 * 13
    r = _train(store, tmp_path / "c", f"train.resume={tmp_path / 'nowhere'}")
    assert r.returncode == 2 and "no committed checkpoint at" in r.stderr


@pytest.mark.slow
def test_heat_map_history_travels_in_checkpoints_across_a_resume(store, tmp_path):
    args = [a for a in TRAIN if not a.startswith("tracking.histograms")]
    r = run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'a'}", *args, "train.epochs=1")
    assert r.returncode == 0, r.stderr
    run_id = store.only_run().info.run_id
    r = run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'b'}", *args, "train.epochs=2",
                f"train.resume={run_id}")
    assert r.returncode == 0, r.stderr
    state = load_state(find_entry(tmp_path / "a").path / "state.pt")  # the resumed run's last checkpoint
    assert state["tracker"]["steps"] == [1, 10, 20]  # logging steps before and after the resume
    samples = state["tracker"]["samples"][0]
    assert samples.dtype == torch.bfloat16 and samples.numel() == sum(n for _, n in state["tracker"]["layouts"][0])
    from PIL import Image

    image = Image.open(store.client.download_artifacts(run_id, "heatmaps/weight/head.weight.png", str(tmp_path)))
    assert image.size == (1000, 420)


def test_resuming_into_a_different_model_is_refused(tmp_path):
    net = fresh("d2l_mlp")
    store = CheckpointStore(tmp_path)
    store.save(1, lambda d: (save_weights(d / "weights.safetensors", net, 1), torch.save({}, d / "state.pt")))
    other = runner.build(model="d2l_mlp", overrides=["model.layers.1.activation=tanh"])
    with pytest.raises(CheckpointError, match="different model config"):
        load_checkpoint(store.latest(), other)


# --- registry and runner-weights -------------------------------------------------------------

@pytest.mark.slow
def test_registry_list_show_diff_export_through_the_cli(store, tmp_path):
    for i, lr in enumerate(("0.01", "0.05")):
        r = run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / str(i)}", "train.progress=quiet",
                    "tracking.system_metrics=false", "train.epochs=2", f"train.lr={lr}", "model=d2l_tied")
        assert r.returncode == 0, r.stderr
        assert f"weights: models:/d2l_tied/{i + 1}" in r.stdout
    versions = store.client.search_model_versions("name='d2l_tied'")
    assert sorted(v.tags["overrides"] for v in versions) == ["train.epochs=2 train.lr=0.01 model=d2l_tied",
                                                            "train.epochs=2 train.lr=0.05 model=d2l_tied"]
    best = min(versions, key=lambda v: float(v.tags["metric_value"]))
    assert store.client.get_model_version_by_alias("d2l_tied", "best").version == best.version
    r = weights_cli(store, "list")
    assert r.returncode == 0, r.stderr
    assert "models:/d2l_tied/1" in r.stdout and "models:/d2l_tied/2" in r.stdout and "best" in r.stdout
    r = weights_cli(store, "show", "models:/d2l_tied@best", "shared.*", "--values")
    assert r.returncode == 0, r.stderr
    assert "shared.weight" in r.stdout and "shared_again.weight" in r.stdout and "output.weight" not in r.stdout
    r = weights_cli(store, "diff", "models:/d2l_tied/1", "models:/d2l_tied/latest")
    assert r.returncode == 0, r.stderr
    a = read_weights(find_entry(tmp_path / "0").path / "weights.safetensors")[0]
    b = read_weights(find_entry(tmp_path / "1").path / "weights.safetensors")[0]
    expected = (b["shared.weight"] - a["shared.weight"]).norm().item()
    assert f"{expected:.4g}" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("│")]
    rel = [float(line.split("│")[3]) for line in rows]
    assert rel == sorted(rel, reverse=True)  # largest relative change first
    out = tmp_path / "export.npz"
    r = weights_cli(store, "export", "models:/d2l_tied/2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    import numpy as np

    with np.load(out) as z:
        assert torch.equal(torch.from_numpy(z["shared.weight"]), b["shared.weight"])
        assert json.loads(str(z["__tie_map__"]))["shared.weight"]["aliases"] == ["shared_again.weight"]
    r = weights_cli(store, "export", f"runs:/{versions[0].run_id}/checkpoints/final", "--out", str(tmp_path / "e.safetensors"))
    assert r.returncode == 0, r.stderr
    r = weights_cli(store, "show", "models:/nope/1", process=True)
    assert r.returncode == 2 and "error: models:/nope/1" in r.stderr and "Traceback" not in r.stderr


def test_warm_start_by_pattern_with_rename(tmp_path):
    src = fresh("d2l_mlp", seed=3)
    save_weights(tmp_path / "src.safetensors", src)
    ws = {"source": str(tmp_path / "src.safetensors"), "include": ["hidden.*"],
          "rename": [{"pattern": r"^hidden\.", "replace": "body.block-2.dense."}]}
    net = runner.build(model="d2l_nested", init={"rules": [], "warm_start": ws})
    assert torch.equal(net.param("body.block-2.dense.weight"), src.param("hidden.weight"))
    assert not torch.equal(net.param("body.block-1.dense.weight"), src.param("hidden.weight"))
    report = net.init_report.by_name()
    assert report["body.block-2.dense.bias"].source == f"{tmp_path / 'src.safetensors'}:hidden.bias"
    assert report["body.block-1.dense.bias"].source == "init"
    assert net.init_report.to_dict()["warm_start"]["loaded"] == {"body.block-2.dense.weight": "hidden.weight",
                                                               "body.block-2.dense.bias": "hidden.bias"}


def test_warm_start_mismatches_are_listed_or_skipped_when_allowed(tmp_path):
    src = fresh("d2l_mlp")
    save_weights(tmp_path / "src.safetensors", src)
    ws = {"source": str(tmp_path / "src.safetensors")}
    with pytest.raises(ConfigError) as e:
        runner.build(model="tied_autoencoder", init={"warm_start": ws})
    text = str(e.value)
    assert "hidden.weight -> hidden.weight: the model has no such parameter" in text
    assert "output.bias -> output.bias: the model has no such parameter" in text and "(4 problems)" in text
    ws["allow_mismatch"] = True
    ws["rename"] = [{"pattern": "^hidden", "replace": "encoder"}]
    net = runner.build(model="tied_autoencoder", init={"warm_start": ws})
    skipped = net.init_report.warm_start["skipped"]
    assert any("shape [4, 4] does not fit the model's [2, 4]" in s for s in skipped) and len(skipped) == 4


def test_warm_start_config_errors(run_dir):
    r = run_main("task=inspect", "+init.warm_start={include: [a], rename: [{pattern: '(', replace: x}]}", run_dir)
    assert r.returncode == 2
    assert "init.warm_start.source: missing required value" in r.stderr
    assert "init.warm_start.rename[0].pattern: is not a valid regular expression" in r.stderr
