"""The real CLI: inspect output, Hydra behaviour, user errors (in a subprocess where the process
boundary matters: exit statuses, environment, imports; in this process otherwise)."""
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli, run_main
from runner.errors import ConfigError


def test_inspect_nested_prints_summary_params_and_values(run_dir):
    r = run_cli("task=inspect", "model=d2l_nested", "inspect.show=body.block-1.dense.bias", run_dir)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Total params: 85" in out and "Trainable params: 85" in out and "Non-trainable params: 0" in out
    assert "body.block-3.dense.weight" in out
    assert "block-1" in out and "(80)" in out
    assert "body.block-1.dense.bias [4] float32" in out


def test_inspect_does_not_import_mlflow(tmp_path):
    code = (
        "import sys\n"
        f"sys.argv = ['runner', 'task=inspect', 'model=d2l_nested', 'hydra.run.dir={tmp_path}']\n"
        "from runner.cli import main\n"
        "try:\n    main()\nfinally:\n"
        "    print('MLFLOW_LOADED' if any(m == 'mlflow' or m.startswith('mlflow.') for m in sys.modules) else 'NO_MLFLOW')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("NO_MLFLOW")


def test_help_and_cfg_job_work():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    assert "model: " in r.stdout and "d2l_nested" in r.stdout and "init: " in r.stdout
    r = run_cli("--cfg", "job", "model=d2l_nested", "seed=7")
    assert r.returncode == 0, r.stderr
    assert "name: d2l_nested" in r.stdout and "seed: 7" in r.stdout


def test_run_directory_is_created_with_hydra_configs(tmp_path):
    r = run_cli("task=inspect", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r" / ".hydra" / "config.yaml").is_file()
    import json

    report = json.loads((tmp_path / "r" / "init_report.json").read_text())
    assert [p["name"] for p in report["parameters"]] == ["hidden.weight", "hidden.bias", "output.weight", "output.bias"]
    assert "Total params: 25" in (tmp_path / "r" / "summary.txt").read_text()


def test_multirun_inspect_sweeps(tmp_path):
    # data.seed is in the data schema but in no data preset: set without a '+', in every job
    r = run_cli("-m", "task=inspect", "model=d2l_mlp,d2l_nested", "data.seed=7", f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Total params:") == 2
    assert "Total params: 25" in r.stdout and "Total params: 85" in r.stdout
    for job in ("0", "1"):
        assert "seed: 7" in (tmp_path / "s" / job / ".hydra" / "config.yaml").read_text().split("data:")[1]


def test_settable_marks_only_plain_overrides_inside_the_yaml_preset_groups():
    from runner.config import as_typed, settable

    given = ["data.seed=3", "data.seed=1,2", "init.warm_start={source: a=b}", "model.ties=[]", "data.kind=text",
             "+data.autoencode=true", "++data.seed=4", "~init.edits", "data.autoencod=true", "train.lr=0.1",
             "hydra.run.dir=x", "data=file", "model.layers.1.out=3", "datas.seed=1", "job"]
    sent = settable(given)
    assert sent == ["++data.seed=3", "++data.seed=1,2", "++init.warm_start={source: a=b}", "++model.ties=[]",
                    "++data.kind=text", *given[5:8], "++data.autoencod=true", *given[9:12], "++model.layers.1.out=3",
                    *given[13:]]
    assert as_typed(sent) == given[:6] + ["data.seed=4"] + given[7:]  # an explicit ++ reads the same


def test_schema_keys_a_preset_leaves_out_are_set_like_listed_ones():
    import runner

    prepared = runner.prepare(runner.compose(["data.autoencode=true", "init.allow_unmatched=true",
                                              "init.warm_start=null"], model="tied_autoencoder"))
    data = prepared.data
    assert prepared.config.data.autoencode is True and prepared.config.init.allow_unmatched is True
    assert torch.equal(data.y_val, data.x_val.flatten(1))  # the input is its own target
    with pytest.raises(ConfigError, match=r"data.autoencod: unknown key for 'kind uniform_regression' \(did you mean"):
        runner.prepare(runner.compose(["data.autoencod=true"]))  # a key the data kind lacks stays an error


@pytest.mark.parametrize("args, expected", [
    (["model.layers.1.type=lnear"], "model.layers[1].type: unknown layer type 'lnear' (did you mean 'linear'?)"),
    (["model.layers.1.out=0", "+model.layers.2.activation=relux"],
     "model.layers[1].out: must be a positive integer or 'auto' (the data's size), got 0"),
    (["+model.layers.1.otu=3"], "model.layers[1].otu: unknown key for 'linear' (did you mean 'out'?)"),
    (["data=file"], "data.path: missing required value"),
    (["task=inspekt"], "task: unknown task 'inspekt' (did you mean 'inspect'?)"),
    (["inspect.show=nothing.here"], "inspect.show: no parameter matches 'nothing.here'"),
    (["init=d2l_xavier_42", "model=d2l_nested"], "init.rules[0]: selects no parameter"),
])
def test_user_errors_are_short_and_exit_nonzero(args, expected, run_dir, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code, out, err = run_main("task=inspect", *args, run_dir)
    assert code == 2, (out, err)
    assert expected in err
    assert "Traceback" not in err and "Traceback" not in out


def test_all_problems_in_one_message(run_dir):  # exit status and output of the real process
    r = run_cli("task=inspect", "model.layers.1.out=0", "+model.layers.2.activation=relux", "seed=-3", run_dir)
    assert r.returncode == 2
    assert "(3 problems)" in r.stderr
    for line in ("model.layers[1].out", "model.layers[2].activation", "seed: must be a non-negative integer"):
        assert line in r.stderr


def test_full_error_env_shows_the_trace(run_dir):
    r = run_cli("task=inspect", "model.layers.1.type=lnear", run_dir, env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode != 0
    assert "Traceback" in r.stderr


@pytest.mark.parametrize("args, expected", [
    (["model=nope"], "error: model: no preset named 'nope'; presets: char_gpt, d2l_mlp"),
    (["model=d2l_mlpp"], "error: model: no preset named 'd2l_mlpp' (did you mean 'd2l_mlp'?)"),
    (["train.lrr=0.1"], "error: train.lrr: unknown key (did you mean 'lr'?)"),
    (["train.lr=[1,2"], "error: cannot parse the override 'train.lr=[1,2'"),
])
def test_hydra_errors_end_like_the_runners_own(args, expected, run_dir, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code, out, err = run_main("task=inspect", *args, run_dir)
    assert code == 2, err
    assert expected in err and "Traceback" not in err and "HYDRA_FULL_ERROR" not in err


def test_a_hydra_error_exits_2_from_the_real_process(run_dir):
    r = run_cli("task=inspect", "train.lr=[1,2", run_dir)
    assert r.returncode == 2, r.stderr
    assert "error: cannot parse the override 'train.lr=[1,2'" in r.stderr and "Traceback" not in r.stderr
