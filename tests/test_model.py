"""Model building, stable names, access by index path and by name, summary."""
import pytest
import torch

import runner
from runner.errors import ConfigError
from runner.model import build_model
from runner.model.summary import summarize

from conftest import presets

X = torch.rand(2, 4)


def leaf_rows_total(s):
    return sum(r.params for r in s.rows if not r.is_block)


def build_checked(model, data, overrides=()):
    net = runner.build(model=model, data=data, overrides=list(overrides))
    s = summarize(net)
    distinct = {id(t): t.numel() for t in [*net.parameters(), *net.buffers()]}
    assert s.total == sum(distinct.values())
    assert sum(r.params for r in s.rows) == s.total
    return net


DATA_FOR = {"char_gpt": "text", "digits_cnn": "digits", "digits_resnet": "digits", "digits_se": "digits",
            "digits_user_model": "digits"}  # the others are built for the chapter's data


@pytest.mark.parametrize("model", presets("model"))
def test_every_shipped_model_builds_on_its_data(model):
    build_checked(model, DATA_FOR.get(model, "d2l_uniform"), ["data.max_chars=50000"] if model == "char_gpt" else [])


@pytest.mark.parametrize("model", ["d2l_mlp", "mlp_wide"])
@pytest.mark.parametrize("data", [d for d in presets("data") if d != "text"])  # text: token ids, for char_gpt
def test_every_shipped_dataset_builds_a_model(model, data, tmp_path):
    overrides = []
    if data == "file":
        import numpy as np

        path = tmp_path / "d.npz"
        np.savez(path, x=np.random.rand(20, 3).astype("float32"), y=np.random.rand(20, 1).astype("float32"))
        overrides = [f"data.path={path}"]
    build_checked(model, data, [*overrides, "model.layers.2.out=auto"])  # the head fits whatever the data is


def test_a_model_that_does_not_fit_the_data_is_built_but_not_trained():
    from runner.train.loop import fit

    prepared = runner.prepare(runner.compose(model="d2l_mlp", data="digits"))
    assert prepared.net.output_problem == ("outputs 1 value(s) per sample, but the data has 10 classes; set the last "
                                           "layer's out to 10 (or auto)")
    before = {n: p.clone() for n, p in prepared.net.params().items()}
    with pytest.raises(ConfigError, match=r"model: outputs 1 value\(s\) per sample, but the data has 10 classes"):
        fit(prepared.net, prepared.data, prepared.config.train)
    assert all(torch.equal(p, before[n]) for n, p in prepared.net.params().items())  # refused before any step
    assert runner.build(model="d2l_mlp").output_problem is None


def test_reusing_a_layer_needs_matching_sizes():
    # the chapter's shared Dense(4) works on 4 features only; other inputs get a clear error
    with pytest.raises(ConfigError, match=r"model.layers\[2\]: does not fit an input of shape \[64, 4\]"):
        runner.build(model="d2l_tied", data="classification")


def test_d2l_mlp_counts_and_names():
    net = runner.build(model="d2l_mlp")
    assert list(net.params()) == ["hidden.weight", "hidden.bias", "output.weight", "output.bias"]
    assert summarize(net).total == 25
    assert net(X).shape == (2, 1)


def test_d2l_nested_counts_names_and_access():
    net = runner.build(model="d2l_nested")
    s = summarize(net)
    assert s.total == 85 and s.trainable == 85 and s.non_trainable == 0
    rows = {r.name: r for r in s.rows}
    assert rows["body"].subtotal == 80
    assert rows["head"].params == 5
    assert [r.name for r in s.rows if r.depth == 1] == [f"body.block-{i}" for i in range(4)]
    assert leaf_rows_total(s) == 85
    # the first Dense inside the second nested block, both ways
    by_index = net[0][1][1].bias
    by_name = net.param("body.block-1.dense.bias")
    assert by_index is by_name
    assert net.module("body.block-1.dense") is net[0][1][1]
    params = net.params()
    assert list(params)[:2] == ["body.block-0.dense.weight", "body.block-0.dense.bias"]
    assert params["body.block-1.dense.bias"] is by_name


def test_names_come_from_config_not_construction_order():
    cfg = {"layers": [{"type": "linear", "out": 3}, {"type": "relu"}, {"type": "linear", "out": 2, "name": "out"}]}
    net = build_model(cfg, X)
    assert list(net.params()) == ["linear-0.weight", "linear-0.bias", "out.weight", "out.bias"]
    assert [r.out_shape for r in summarize(net).rows] == [(2, 3), (2, 3), (2, 2)]


def test_repeat_with_explicit_names_and_layernorm_shape_inference():
    cfg = {"layers": [{"type": "repeat", "name": "enc", "times": 2, "names": ["a", "b"],
                       "block": {"type": "sequential", "layers": [
                           {"type": "dense", "out": 6, "name": "fc", "activation": "tanh"},
                           {"type": "layernorm", "name": "ln"}, {"type": "dropout", "p": 0.1}]}}]}
    net = build_model(cfg, X)
    assert "enc.b.ln.weight" in net.params()
    assert net.param("enc.a.fc.weight").shape == (6, 4)
    assert net.param("enc.b.fc.weight").shape == (6, 6)


def test_params_mapping_is_ordered_and_unique():
    net = runner.build(model="mlp_wide", data="digits")
    names = list(net.params())
    assert names == [n for n, _ in net.named_parameters()]
    assert len(set(map(id, net.params().values()))) == len(names)


def test_every_config_problem_is_reported_at_once():
    cfg = {"layers": [
        {"type": "lnear", "out": 4},
        {"type": "linear", "out": -1, "activaton": "relu"},
        {"type": "linear", "activation": "relux"},
        {"type": "repeat", "times": 0, "block": {"type": "flatten"}, "name_format": "x"},
    ], "nmae": "x"}
    with pytest.raises(ConfigError) as e:
        build_model(cfg, X)
    msgs = [str(p) for p in e.value.problems]
    joined = "\n".join(msgs)
    assert "model.layers[0].type: unknown layer type 'lnear' (did you mean 'linear'?)" in joined
    assert "model.nmae: unknown key (did you mean 'name'?)" in joined
    assert "model.layers[1].out: must be a positive integer or 'auto' (the data's size), got -1" in joined
    assert "model.layers[1].activaton: unknown key for 'linear' (did you mean 'activation'?)" in joined
    assert "model.layers[2].activation: unknown activation 'relux' (did you mean 'relu'?)" in joined
    assert "model.layers[2].out: missing required value" in joined
    assert "model.layers[3].times: must be a positive integer, got 0" in joined
    assert "model.layers[3].name_format: must contain '{i}'" in joined
    assert len(msgs) == 8


def test_declared_input_size_must_match_the_data():
    cfg = {"layers": [{"type": "linear", "in": 5, "out": 2}]}
    with pytest.raises(ConfigError, match=r"model.layers\[0\].in: is 5 but the input to this layer has 4 features"):
        build_model(cfg, X)


def test_duplicate_sibling_names_are_rejected():
    cfg = {"layers": [{"type": "relu", "name": "a"}, {"type": "tanh", "name": "a"}]}
    with pytest.raises(ConfigError, match=r"model.layers\[1\].name: duplicate name 'a'"):
        build_model(cfg, X)


def test_unknown_parameter_name_suggests():
    net = runner.build(model="d2l_nested")
    with pytest.raises(runner.UserError, match="did you mean 'body.block-1.dense.bias'"):
        net.param("body.block-1.dense.bais")
