"""Initializers, rules, custom code, edits, reproducibility and the init report."""
import math

import pytest
import torch
from torch import nn

import runner
from runner.errors import ConfigError
from runner.init import apply_init, edit_param, stream_seed
from runner.init import initializers as I
from runner.model import build_model

X = torch.rand(2, 4)
MLP = {"name": "m", "layers": [{"type": "flatten", "name": "flatten"},
                               {"type": "linear", "name": "hidden", "out": 4, "activation": "relu"},
                               {"type": "linear", "name": "output", "out": 1}]}

TORCH_EQUIVALENTS = {
    "normal": (dict(mean=0.5, std=2.0), lambda t, g: nn.init.normal_(t, 0.5, 2.0, generator=g)),
    "uniform": (dict(a=-3.0, b=1.0), lambda t, g: nn.init.uniform_(t, -3.0, 1.0, generator=g)),
    "trunc_normal": (dict(std=0.5, a=-1.0, b=1.0), lambda t, g: nn.init.trunc_normal_(t, 0, 0.5, -1, 1, generator=g)),
    "zeros": ({}, lambda t, g: nn.init.zeros_(t)),
    "ones": ({}, lambda t, g: nn.init.ones_(t)),
    "constant": (dict(value=42.0), lambda t, g: nn.init.constant_(t, 42.0)),
    "xavier_uniform": (dict(gain=2.0), lambda t, g: nn.init.xavier_uniform_(t, 2.0, generator=g)),
    "glorot_uniform": ({}, lambda t, g: nn.init.xavier_uniform_(t, generator=g)),
    "xavier_normal": ({}, lambda t, g: nn.init.xavier_normal_(t, generator=g)),
    "glorot_normal": ({}, lambda t, g: nn.init.xavier_normal_(t, generator=g)),
    "kaiming_uniform": (dict(mode="fan_out", nonlinearity="relu"),
                        lambda t, g: nn.init.kaiming_uniform_(t, mode="fan_out", nonlinearity="relu", generator=g)),
    "he_uniform": ({}, lambda t, g: nn.init.kaiming_uniform_(t, generator=g)),
    "kaiming_normal": (dict(a=0.1), lambda t, g: nn.init.kaiming_normal_(t, a=0.1, generator=g)),
    "he_normal": ({}, lambda t, g: nn.init.kaiming_normal_(t, generator=g)),
    "orthogonal": (dict(gain=0.5), lambda t, g: nn.init.orthogonal_(t, 0.5, generator=g)),
    "eye": ({}, lambda t, g: nn.init.eye_(t)),
}


def test_sparse_matches_torch_values_and_draws_zero_positions_from_the_generator():
    # torch.nn.init.sparse_ takes its zero positions from the global RNG; ours from the generator
    ours, again = torch.empty(16, 12), torch.empty(16, 12)
    I.call(I.BUILTINS["sparse"], dict(sparsity=0.5, std=0.1), ours, torch.Generator().manual_seed(3))
    torch.manual_seed(123)  # the global RNG must not matter
    I.call(I.BUILTINS["sparse"], dict(sparsity=0.5, std=0.1), again, torch.Generator().manual_seed(3))
    assert torch.equal(ours, again)
    theirs = nn.init.sparse_(torch.empty(16, 12), 0.5, 0.1, generator=torch.Generator().manual_seed(3))
    values = torch.empty(16, 12).normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours[ours != 0], values[ours != 0]) and torch.equal(theirs[theirs != 0], values[theirs != 0])
    assert all(int((ours[:, j] == 0).sum()) == 8 for j in range(12))


def test_every_builtin_is_covered():
    assert set(TORCH_EQUIVALENTS) | {"sparse"} == set(I.BUILTINS)


@pytest.mark.parametrize("name", sorted(TORCH_EQUIVALENTS))
def test_builtin_matches_torch_under_the_same_generator(name):
    args, reference = TORCH_EQUIVALENTS[name]
    ours, theirs = torch.empty(16, 12), torch.empty(16, 12)
    I.call(I.BUILTINS[name], args, ours, torch.Generator().manual_seed(3))
    reference(theirs, torch.Generator().manual_seed(3))
    assert torch.equal(ours, theirs)


BIG = (400, 500)


@pytest.mark.parametrize("name, args, check", [
    ("normal", dict(mean=1.0, std=0.5), lambda t: abs(t.mean() - 1) < 0.01 and abs(t.std() - 0.5) < 0.01),
    ("uniform", dict(a=-2.0, b=3.0), lambda t: t.min() >= -2 and t.max() < 3 and abs(t.mean() - 0.5) < 0.02
     and abs(t.var() - 25 / 12) < 0.03),
    ("trunc_normal", dict(std=1.0, a=-0.5, b=0.5), lambda t: t.min() >= -0.5 and t.max() <= 0.5 and abs(t.mean()) < 0.01),
    ("xavier_uniform", {}, lambda t: t.abs().max() <= math.sqrt(6 / sum(BIG)) and abs(t.var() - 2 / sum(BIG)) < 1e-4),
    ("xavier_normal", {}, lambda t: abs(t.std() - math.sqrt(2 / sum(BIG))) < 1e-3),
    ("kaiming_uniform", dict(nonlinearity="relu"), lambda t: t.abs().max() <= math.sqrt(6 / BIG[1])
     and abs(t.var() - 2 / BIG[1]) < 1e-4),
    ("kaiming_normal", dict(nonlinearity="relu"), lambda t: abs(t.std() - math.sqrt(2 / BIG[1])) < 1e-3),
    ("orthogonal", {}, lambda t: torch.allclose(t @ t.T, torch.eye(BIG[0]), atol=1e-4)),
    ("sparse", dict(sparsity=0.3), lambda t: all(((t[:, j] == 0).sum() == 120) for j in range(0, 500, 50))),
    ("constant", dict(value=42.0), lambda t: bool((t == 42).all())),
])
def test_distribution_statistics(name, args, check):
    t = torch.empty(*BIG)
    I.call(I.BUILTINS[name], args, t, torch.Generator().manual_seed(0))
    assert check(t)


def test_custom_d2l_distribution_support_and_zero_fraction():
    t = torch.empty(500, 400)
    I.call(I.resolve("runner.init.custom.d2l_weird"), {}, t, torch.Generator().manual_seed(1))
    zero = (t == 0).float().mean().item()
    pos, neg = t[t > 0], t[t < 0]
    assert abs(zero - 0.5) < 0.01
    assert abs(pos.numel() / t.numel() - 0.25) < 0.01 and abs(neg.numel() / t.numel() - 0.25) < 0.01
    assert pos.min() >= 5 and pos.max() < 10 and neg.max() <= -5 and neg.min() >= -10


def test_d2l_presets_reproduce_the_chapter():
    normal = runner.build(model="d2l_mlp", init="d2l_normal")
    w = normal.param("hidden.weight")
    assert abs(w.std().item() - 0.01) < 0.01 and torch.all(normal.param("hidden.bias") == 0)
    const = runner.build(model="d2l_mlp", init="d2l_constant")
    assert torch.all(const.param("hidden.weight") == 1) and torch.all(const.param("output.bias") == 0)
    x42 = runner.build(model="d2l_mlp", init="d2l_xavier_42")
    assert torch.all(x42.param("output.weight") == 42)
    bound = math.sqrt(6 / (4 + 4))
    assert x42.param("hidden.weight").abs().max() <= bound
    report = x42.init_report.by_name()
    assert report["hidden.weight"].rule == "first_dense" and report["hidden.weight"].init == "xavier_uniform"
    assert report["output.weight"].rule == "output_42" and report["output.weight"].args == {"value": 42.0}
    assert report["hidden.bias"].rule == "default"
    custom = runner.build(model="d2l_mlp", init="d2l_custom")
    hw = custom.param("hidden.weight")
    assert torch.all((hw == 0) | (hw.abs() >= 5))


def test_later_rules_override_earlier_ones_and_report_names_the_rule():
    net = build_model(MLP, X)
    rules = [{"init": "ones"},  # everything
             {"kind": "bias", "init": "zeros", "name": "no_bias"},
             {"params": "output.*", "layer": "linear", "init": "constant", "args": {"value": 7.0}}]
    report = apply_init(net, {"rules": rules}, seed=0).by_name()
    assert torch.all(net.param("hidden.weight") == 1) and torch.all(net.param("hidden.bias") == 0)
    assert torch.all(net.param("output.weight") == 7) and torch.all(net.param("output.bias") == 7)
    assert {n: e.rule for n, e in report.items()} == {
        "hidden.weight": "rules[0]", "hidden.bias": "no_bias", "output.weight": "rules[2]", "output.bias": "rules[2]"}
    assert report["output.weight"].mean == 7 and report["hidden.bias"].max == 0


def test_parameters_no_rule_selects_keep_the_layer_default():
    net = build_model(MLP, X)
    report = apply_init(net, {"rules": [{"params": "hidden.weight", "init": "zeros"}]}, seed=0).by_name()
    assert report["output.weight"].rule == "default"
    assert report["output.weight"].init == "kaiming_uniform(a=sqrt(5))"
    assert net.param("output.bias").abs().max() <= 1 / math.sqrt(4)


def test_default_matches_torch_reset_parameters_under_the_stream_generator():
    net = build_model(MLP, X)
    apply_init(net, {}, seed=5)
    ref = nn.Linear(4, 4)
    nn.init.kaiming_uniform_(ref.weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(stream_seed(5, "hidden.weight")))
    assert torch.equal(ref.weight, net.param("hidden.weight"))


def test_rule_selecting_nothing_is_an_error_unless_allowed():
    net = build_model(MLP, X)
    rules = [{"params": "hiden.weight", "init": "zeros"}, {"layer": "layernorm", "init": "ones"}]
    with pytest.raises(ConfigError) as e:
        apply_init(net, {"rules": rules}, seed=0)
    text = str(e.value)
    assert "init.rules[0]: selects no parameter" in text and "did you mean 'hidden.weight'" in text
    assert "init.rules[1]: selects no parameter" in text
    apply_init(net, {"rules": rules, "allow_unmatched": True}, seed=0)
    rules[0]["allow_unmatched"] = rules[1]["allow_unmatched"] = True
    apply_init(net, {"rules": rules}, seed=0)


def test_bad_rules_are_all_reported():
    net = build_model(MLP, X)
    rules = [{"init": "xavier_unifrom"}, {"init": "normal", "args": {"sdt": 1}},
             {"init": "zeros", "layer": "lnear"}, {"init": "no.such.module.fn"}, {"selct": "x", "init": "ones"}]
    with pytest.raises(ConfigError) as e:
        apply_init(net, {"rules": rules}, seed=0)
    text = str(e.value)
    assert "init.rules[0].init: unknown initializer 'xavier_unifrom' (did you mean 'xavier_uniform'?)" in text
    assert "init.rules[1].args: normal takes no argument 'sdt'; it takes mean, std" in text
    assert "init.rules[2].layer: unknown layer type 'lnear' (did you mean 'linear'?)" in text
    assert "init.rules[3].init: unknown initializer 'no.such.module.fn'" in text
    assert "init.rules[4].selct: unknown key" in text
    assert "(5 problems)" in text


def test_matrix_initializer_on_a_vector_is_a_clear_error():
    net = build_model(MLP, X)
    with pytest.raises(ConfigError, match=r"init.rules\[0\]: xavier_uniform cannot initialise hidden.bias"):
        apply_init(net, {"rules": [{"params": "hidden.bias", "init": "xavier_uniform"}]}, seed=0)


def test_class_based_custom_initializer_with_args():
    net = build_model(MLP, X)
    rule = {"params": "hidden.weight", "init": "tests_support.ScaledOnes", "args": {"scale": 3.0}}
    apply_init(net, {"rules": [rule]}, seed=0)
    assert torch.all(net.param("hidden.weight") == 3)


def test_edits_from_config_and_api():
    net = build_model(MLP, X)
    edits = [{"param": "hidden.weight", "op": "add", "value": 1}, {"param": "hidden.weight", "index": "0, 0", "value": 42},
             {"param": "output.bias", "op": "mul", "value": 0}, {"param": "hidden.bias", "index": "1:3", "value": -1}]
    report = apply_init(net, {"rules": [{"init": "zeros"}], "edits": edits}, seed=0).by_name()
    w = net.param("hidden.weight")
    assert w[0, 0] == 42 and torch.all(w.flatten()[1:] == 1)
    assert net.param("hidden.bias").tolist() == [0, -1, -1, 0]
    assert report["hidden.weight"].edits == ["add 1", "set[0, 0] 42"] and report["hidden.weight"].max == 42
    edit_param(net, "output.weight", "set", 5.0, index=[0, 2])
    assert net.param("output.weight")[0, 2] == 5


def test_bad_edits_are_all_reported_and_nothing_is_applied():
    net = build_model(MLP, X)
    apply_init(net, {"rules": [{"init": "zeros"}]}, seed=0)
    edits = [{"param": "hidden.weight", "value": 1},
             {"param": "hiden.weight", "value": 1},
             {"param": "hidden.weight", "index": "9, 0", "value": 1},
             {"param": "hidden.bias", "index": "0, 0", "value": 1},
             {"param": "hidden.bias", "op": "pow", "value": 2}]
    with pytest.raises(ConfigError) as e:
        apply_init(net, {"rules": [{"init": "zeros"}], "edits": edits}, seed=0)
    text = str(e.value)
    assert "init.edits[4].op: unknown op 'pow'" in text
    with pytest.raises(ConfigError) as e:
        apply_init(net, {"rules": [{"init": "zeros"}], "edits": edits[:4]}, seed=0)
    text = str(e.value)
    assert "init.edits[1].param: no parameter named 'hiden.weight' (did you mean 'hidden.weight'?)" in text
    assert "init.edits[2].index: hidden.weight has shape [4, 4]" in text
    assert "init.edits[3].index: hidden.bias has shape [4]" in text
    assert torch.all(net.param("hidden.weight") == 0)  # the valid first edit was not applied either


def test_same_seed_gives_bitwise_same_weights_and_other_seeds_differ():
    a = runner.build(model="d2l_nested", seed=11).params()
    b = runner.build(model="d2l_nested", seed=11).params()
    c = runner.build(model="d2l_nested", seed=12).params()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if "weight" in k)


def test_adding_a_layer_elsewhere_leaves_other_layers_unchanged():
    base = build_model(MLP, X)
    apply_init(base, {"rules": [{"kind": "weight", "init": "normal"}]}, seed=0)
    bigger_cfg = {"layers": [MLP["layers"][0], {"type": "linear", "name": "extra", "out": 4}, *MLP["layers"][1:]]}
    bigger = build_model(bigger_cfg, X)
    apply_init(bigger, {"rules": [{"kind": "weight", "init": "normal"}]}, seed=0)
    for name in ("hidden.weight", "hidden.bias", "output.weight", "output.bias"):
        assert torch.equal(base.param(name), bigger.param(name)), name


def test_init_report_covers_every_parameter_with_stats():
    net = runner.build(model="d2l_nested", init="d2l_normal")
    report = net.init_report
    assert [e.name for e in report.entries] == list(net.params())
    for e in report.entries:
        t = net.param(e.name)
        assert e.rule == ("weights" if e.name.endswith("weight") else "biases")
        assert e.mean == pytest.approx(t.mean().item()) and e.max == pytest.approx(t.max().item())
    d = report.to_dict()
    assert d["seed"] == 0 and len(d["parameters"]) == 10
