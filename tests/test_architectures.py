"""Every node type against a hand-written torch equivalent; buffers, depth-scaled init, ties at
language-model scale, user modules, and the config errors of every node type."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import runner
from conftest import REPO
from runner.errors import ConfigError
from runner.model import BuildContext, build_model, check_model
from runner.model.layers import NODE_TYPES
from runner.model.summary import summarize


def build(node, x, ctx=None):
    return build_model({"name": "t", "layers": [{"name": "l", **node}]}, x, ctx or BuildContext(out_features=7, vocab=10))


class PosRef(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.table = nn.Parameter(torch.randn(n, d))

    def forward(self, x):
        return x + self.table[: x.shape[1]]


def causal(t):
    return torch.triu(torch.ones(t, t, dtype=torch.bool), 1)


class MhaRef(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, h, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, attn_mask=causal(x.shape[1]), need_weights=False)[0]


class BlockRef(nn.Module):
    """A pre-norm GPT block written out by hand."""

    def __init__(self, d, h, hidden):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MhaRef(d, h)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ResidualRef(nn.Module):
    def __init__(self, body, proj=None, act=None):
        super().__init__()
        self.body, self.proj, self.act = body, proj, act

    def forward(self, x):
        y = self.body(x) + (self.proj(x) if self.proj is not None else x)
        return self.act(y) if self.act else y


MHA = {"qkv.weight": "mha.in_proj_weight", "qkv.bias": "mha.in_proj_bias", "proj.weight": "mha.out_proj.weight",
       "proj.bias": "mha.out_proj.bias"}
BLOCK = {"norm1.weight": "ln1.weight", "norm1.bias": "ln1.bias", **{f"attn.{k}": f"attn.{v}" for k, v in MHA.items()},
         "norm2.weight": "ln2.weight", "norm2.bias": "ln2.bias", "mlp.fc.weight": "up.weight", "mlp.fc.bias": "up.bias",
         "mlp.proj.weight": "down.weight", "mlp.proj.bias": "down.bias"}
BN = {k: k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
WB = {"weight": "weight", "bias": "bias"}
SEQ_WB = {"weight": "0.weight", "bias": "0.bias"}

# type -> [(node fields, input, reference module, our tensor name -> the reference's)]
CASES = {
    "linear": [({"out": 5, "activation": "tanh"}, torch.randn(4, 3), nn.Sequential(nn.Linear(3, 5), nn.Tanh()), SEQ_WB),
               ({"out": "auto", "bias": False}, torch.randn(2, 6, 3), nn.Linear(3, 7, bias=False), {"weight": "weight"})],
    "conv1d": [({"channels": 4, "kernel": 3, "stride": 2, "padding": 1, "activation": "relu"}, torch.randn(2, 3, 10),
                nn.Sequential(nn.Conv1d(3, 4, 3, stride=2, padding=1), nn.ReLU()), SEQ_WB)],
    "conv2d": [({"channels": 6, "kernel": [3, 5], "stride": 2, "padding": [1, 2], "dilation": 2, "groups": 2},
                torch.randn(2, 4, 11, 11), nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=2), WB),
               ({"channels": 3, "kernel": 3, "padding": "same", "bias": False}, torch.randn(2, 2, 5, 5),
                nn.Conv2d(2, 3, 3, padding="same", bias=False), {"weight": "weight"})],
    "maxpool": [({"kernel": 2}, torch.randn(2, 3, 8, 8), nn.MaxPool2d(2), {}),
                ({"kernel": 3, "stride": 2, "padding": 1}, torch.randn(2, 3, 9), nn.MaxPool1d(3, 2, 1), {})],
    "avgpool": [({"kernel": [2, 4]}, torch.randn(2, 3, 8, 8), nn.AvgPool2d((2, 4)), {})],
    "adaptive_avgpool": [({}, torch.randn(2, 3, 5, 5), nn.AdaptiveAvgPool2d(1), {}),
                         ({"size": 2}, torch.randn(2, 3, 7), nn.AdaptiveAvgPool1d(2), {})],
    "batchnorm": [({}, torch.randn(8, 5), nn.BatchNorm1d(5), BN),
                  ({"momentum": 0.3, "eps": 1e-3}, torch.randn(4, 3, 5, 5), nn.BatchNorm2d(3, eps=1e-3, momentum=0.3), BN)],
    "groupnorm": [({"groups": 2}, torch.randn(2, 4, 5, 5), nn.GroupNorm(2, 4), WB)],
    "layernorm": [({"eps": 1e-6}, torch.randn(2, 3, 6), nn.LayerNorm(6, eps=1e-6), WB)],
    "rmsnorm": [({}, torch.randn(2, 3, 6), nn.RMSNorm(6), {"weight": "weight"})],
    "embedding": [({"dim": 4, "padding_idx": 0}, torch.randint(0, 10, (2, 5)), nn.Embedding(10, 4, padding_idx=0),
                   {"weight": "weight"})],
    "pos_embedding": [({"max_len": 8}, torch.randn(2, 5, 4), PosRef(8, 4), {"weight": "table"})],
    "attention": [({"heads": 2}, torch.randn(2, 5, 8), MhaRef(8, 2), MHA)],
    "transformer_block": [({"heads": 2}, torch.randn(2, 5, 8), BlockRef(8, 2, 32), BLOCK)],
    "flatten": [({"start_dim": 2}, torch.randn(2, 3, 4, 5), nn.Flatten(2), {})],
    "reshape": [({"shape": [4, -1]}, torch.randn(2, 12), nn.Unflatten(1, (4, 3)), {})],
    "permute": [({"dims": [0, 2, 1]}, torch.randn(2, 3, 4), None, {})],
    "dropout": [({"p": 0.3}, torch.randn(4, 6), nn.Dropout(0.3), {})],
    "relu": [({}, torch.randn(3, 4), nn.ReLU(), {})],
    "gelu": [({}, torch.randn(3, 4), nn.GELU(), {})],
    "tanh": [({}, torch.randn(3, 4), nn.Tanh(), {})],
    "sigmoid": [({}, torch.randn(3, 4), nn.Sigmoid(), {})],
    "silu": [({}, torch.randn(3, 4), nn.SiLU(), {})],
    "leaky_relu": [({"negative_slope": 0.2}, torch.randn(3, 4), nn.LeakyReLU(0.2), {})],
    "elu": [({"alpha": 0.5}, torch.randn(3, 4), nn.ELU(0.5), {})],
    "softmax": [({"dim": 1}, torch.randn(3, 4), nn.Softmax(1), {})],
    "log_softmax": [({}, torch.randn(3, 4), nn.LogSoftmax(-1), {})],
    "identity": [({}, torch.randn(3, 4), nn.Identity(), {})],
    "sequential": [({"layers": [{"type": "linear", "name": "a", "out": 2}, {"type": "relu"}]}, torch.randn(3, 4),
                    nn.Sequential(nn.Linear(4, 2), nn.ReLU()), {"a.weight": "0.weight", "a.bias": "0.bias"})],
    "repeat": [({"times": 2, "block": {"type": "linear", "out": 4}}, torch.randn(3, 4),
                nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)),
                {"block-0.weight": "0.weight", "block-0.bias": "0.bias", "block-1.weight": "1.weight",
                 "block-1.bias": "1.bias"})],
    "residual": [({"layers": [{"type": "linear", "name": "f", "out": 3}]}, torch.randn(4, 3),
                  ResidualRef(nn.Linear(3, 3)), {"f.weight": "body.weight", "f.bias": "body.bias"}),
                 ({"layers": [{"type": "linear", "name": "f", "out": 5}], "projection": True, "activation": "relu"},
                  torch.randn(4, 3), ResidualRef(nn.Linear(3, 5), nn.Linear(3, 5, bias=False), torch.relu),
                  {"f.weight": "body.weight", "f.bias": "body.bias", "proj.weight": "proj.weight"}),
                 ({"layers": [{"type": "conv2d", "name": "c", "channels": 6, "kernel": 3, "stride": 2, "padding": 1}],
                   "projection": True}, torch.randn(2, 3, 8, 8),
                  ResidualRef(nn.Conv2d(3, 6, 3, 2, 1), nn.Conv2d(3, 6, 1, stride=2, bias=False)),
                  {"c.weight": "body.weight", "c.bias": "body.bias", "proj.weight": "proj.weight"})],
    "module": [({"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3},
                torch.randn(2, 3, 6, 6), nn.Conv2d(3, 4, 3), WB),
               ({"_target_": "torch.nn.LazyLinear", "out_features": 7}, torch.randn(2, 3), nn.Linear(3, 7), WB)],
}
PARAMS = [(t, *case) for t, cases in CASES.items() for case in cases]


def test_every_node_type_has_a_hand_written_equivalent():
    assert set(CASES) | {"reuse"} == set(NODE_TYPES)  # reuse: tests/test_ties.py


@pytest.mark.parametrize("type_, node, x, ref, names", PARAMS, ids=[f"{p[0]}-{i}" for i, p in enumerate(PARAMS)])
def test_node_type_matches_torch(type_, node, x, ref, names):
    torch.manual_seed(0)
    net = build({"type": type_, **node}, x)
    ours = net.tensors()
    assert list(ours) == [f"l.{k}" for k in names]  # names follow the tree, in model order
    if ref is None:  # permute
        assert torch.equal(net(x), x.permute(*node["dims"]))
        return
    ref_state = ref.state_dict()
    with torch.no_grad():
        for k, theirs in names.items():
            assert tuple(ours[f"l.{k}"].shape) == tuple(ref_state[theirs].shape), k
            ref_state[theirs].copy_(ours[f"l.{k}"])
    s = summarize(net)
    assert s.total == sum(t.numel() for t in ref_state.values())  # parameters and buffers, counted once
    net.eval(), ref.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5), type_
    if type_ in ("batchnorm", "dropout"):
        net.train(), ref.train()
        torch.manual_seed(1)
        y = net(x)
        torch.manual_seed(1)
        assert torch.allclose(y, ref(x), atol=1e-5)
        if type_ == "batchnorm":  # running statistics moved the same way
            assert torch.allclose(net.tensors()["l.running_mean"], ref.running_mean)


def test_shapes_are_inferred_and_the_summary_adds_up_for_the_presets():
    bn = lambda c: (2 * c, 2 * c + 1)  # noqa: E731  (scale and shift; running mean, variance and count)
    cnn = [16 * 9 + 16, bn(16), 32 * 16 * 9 + 32, bn(32), 32 * 4 * 4 * 10 + 10]
    resnet = [16 * 9, bn(16), 16 * 16 * 9, bn(16), 16 * 16 * 9, bn(16), 32 * 16 * 9, bn(32), 32 * 32 * 9, bn(32),
              16 * 32, 32 * 10 + 10]
    for model, data, counts in (("digits_cnn", "digits", cnn), ("digits_resnet", "digits", resnet)):
        trainable = sum(c if isinstance(c, int) else c[0] for c in counts)
        total = trainable + sum(c[1] for c in counts if isinstance(c, tuple))
        net = runner.build(model=model, data=data)
        s = summarize(net)
        assert s.total == total and s.trainable == trainable, (model, s.total, s.trainable)
        assert sum(r.params for r in s.rows) == s.total
        assert net(torch.rand(5, 8, 8)).shape == (5, 10)
    assert net.infos["res2.proj"].type == "conv2d" and net.infos["res2"].out_shape == (64, 32, 4, 4)


# --- buffers -------------------------------------------------------------------------------------

def test_buffers_are_named_non_trainable_checkpointed_initialisable_and_never_optimised(tmp_path):
    from runner.checkpoint.weights import load_into, read_weights, save_weights

    net = runner.build(model="digits_cnn", data="digits",
                       init={"rules": [{"params": "bn1.running_var", "kind": "buffer", "init": "constant",
                                        "args": {"value": 2.0}}]})
    buffers = net.buffers_by_name()
    assert list(buffers) == [f"{b}.{k}" for b in ("bn1", "bn2") for k in ("running_mean", "running_var",
                                                                          "num_batches_tracked")]
    assert torch.all(buffers["bn1.running_var"] == 2.0) and torch.all(buffers["bn2.running_var"] == 1.0)
    report = net.init_report.by_name()
    assert report["bn1.running_var"].role == "buffer" and report["bn1.running_var"].rule == "rules[0]"
    assert report["bn2.running_mean"].init == "as constructed"
    s = summarize(net)
    assert s.non_trainable == s.buffers == sum(b.numel() for b in buffers.values())
    opt_ids = {id(p) for p in net.parameters()}
    assert not any(id(b) in opt_ids for b in buffers.values())
    # a training step moves the running statistics; a checkpoint round trip restores them bitwise
    net(torch.rand(16, 8, 8)).sum().backward()
    save_weights(tmp_path / "w.safetensors", net)
    tensors, meta = read_weights(tmp_path / "w.safetensors")
    assert "bn1.running_mean" in tensors and "bn1.running_mean" in meta["runner.buffers"]
    other = runner.build(model="digits_cnn", data="digits", seed=5)
    load_into(other, tensors, meta)
    for k, b in net.buffers_by_name().items():
        assert torch.equal(other.buffers_by_name()[k], b), k
    # a rule whose globs only reach buffers says how to select them
    with pytest.raises(ConfigError, match=r"it names buffers: select them with kind: buffer"):
        runner.build(model="digits_cnn", data="digits", init={"rules": [{"params": "*.running_mean", "init": "zeros"}]})
    with pytest.raises(ConfigError, match=r"'bn1.running_mean' names a buffer .* never tied"):
        runner.build(model="digits_cnn", data="digits", overrides=[
            "+model.ties=[{params: [bn1.running_mean, bn2.running_mean]}]"])


def test_warm_start_kind_selects_parameters_or_buffers(tmp_path):
    from runner.checkpoint.weights import save_weights

    src = runner.build(model="digits_cnn", data="digits", seed=1)
    with torch.no_grad():
        src.buffers_by_name()["bn1.running_mean"].fill_(3.0)
    save_weights(tmp_path / "src.safetensors", src)
    for kind in ("buffer", "param", "all"):
        net = runner.build(model="digits_cnn", data="digits", seed=2,
                           init={"warm_start": {"source": str(tmp_path / "src.safetensors"), "kind": kind}})
        loaded = set(net.init_report.warm_start["loaded"])
        assert ("bn1.running_mean" in loaded) == (kind != "param")
        assert ("conv1.weight" in loaded) == (kind != "buffer")
        assert torch.all(net.buffers_by_name()["bn1.running_mean"] == (3.0 if kind != "param" else 0.0))


# --- init that real models need --------------------------------------------------------------------

def test_depth_scaled_init_and_copy_index_expressions():
    net = runner.build(model="char_gpt", init="gpt", data="text", overrides=[
        "model.vars.n_layer=3", "model.vars.dim=32", "data.max_chars=20000"])
    report = net.init_report.by_name()
    want = 0.02 / math.sqrt(2 * 3)
    for i in range(3):
        for proj in ("attn.proj.weight", "mlp.proj.weight"):
            e = report[f"blocks.block-{i}.{proj}"]
            assert e.rule == "depth_scaled" and e.args == {"std": pytest.approx(want)}
    assert report["blocks.block-0.attn.qkv.weight"].args == {"std": 0.02}
    # the copy index i of the repeat, per tensor (torchtitan's depth_init: 0.02 / sqrt(2 * (i + 1)))
    net = runner.build(model="char_gpt", data="text", overrides=["model.vars.n_layer=3", "model.vars.dim=32",
                                                                  "data.max_chars=20000"],
                       init={"rules": [{"name": "by_depth", "params": "blocks.*.proj.weight", "init": "normal",
                                        "args": {"std": "=0.02 / sqrt(2 * (i + 1))", "mean": "=0 * fan_in"}}]})
    report = net.init_report.by_name()
    for i in range(3):
        assert report[f"blocks.block-{i}.mlp.proj.weight"].args["std"] == pytest.approx(0.02 / math.sqrt(2 * (i + 1)))
    assert abs(report["blocks.block-2.mlp.proj.weight"].std - 0.02 / math.sqrt(6)) < 0.003


def test_calc_resolver_and_safe_expressions():
    from runner.expr import ExprError, evaluate

    from omegaconf import OmegaConf

    cfg = runner.compose(['+model.vars.width="${calc:2 ** 3 * ${model.vars.n_layer}}"'], model="char_gpt", data="text")
    assert OmegaConf.to_container(cfg, resolve=True)["model"]["vars"]["width"] == 32
    assert evaluate("max(1, n) // 2 + sqrt(16)", {"n": 5}) == 6.0
    for bad in ("__import__('os')", "x.y", "[1][0]", "open('f')", "9 ** 9 ** 9", "1 / 0", "n + 1"):
        with pytest.raises(ExprError):
            evaluate(bad, {"x": 1})
    with pytest.raises(ConfigError, match=r"init.rules\[0\].args.std: .*only numbers"):
        runner.build(init={"rules": [{"params": "hidden.weight", "init": "normal", "args": {"std": "=x.y"}}]})
    with pytest.raises(ConfigError, match=r"init.rules\[0\].args: for hidden.weight: .*unknown name 'depth'"):
        runner.build(init={"rules": [{"params": "hidden.weight", "init": "normal", "args": {"std": "=depth"}}]})


# --- ties at language-model scale -----------------------------------------------------------------

def test_tied_embedding_and_head_are_one_tensor_counted_optimised_checkpointed_and_logged_once(tmp_path):
    from runner.checkpoint.weights import save_weights
    from runner.tracking.stats import StatsCollector
    from safetensors.torch import load_file

    net = runner.build(model="char_gpt", init="gpt", data="text", overrides=["data.max_chars=20000"])
    tok, head = net.module("tok"), net.module("head")
    vocab = tok.weight.shape[0]
    assert head.weight is tok.weight and tok.weight.shape == (vocab, 128)
    assert "head.weight" not in net.params() and net.param_aliases()["head.weight"] == "tok.weight"
    s = summarize(net)
    assert s.total == sum(p.numel() for p in {id(p): p for p in net.parameters()}.values())
    assert next(r for r in s.rows if r.name == "head").shared == ["tok.weight"]
    opt = torch.optim.AdamW(net.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(net.params())
    save_weights(tmp_path / "w.safetensors", net)
    assert "head.weight" not in load_file(str(tmp_path / "w.safetensors"))
    c = StatsCollector(net, {"every_n_steps": 1, "histograms": {"enabled": False}})
    x = torch.randint(0, vocab, (2, 16))
    net(x).pow(2).mean().backward()
    c.before_step(None)
    keys = c.after_step(1, 0.0, [0.1]).metrics
    assert "grad_norm/tok.weight" in keys and not any("head.weight" in k for k in keys)
    # the one tensor's gradient is the sum of what both uses would get, untied
    untied = runner.build(model="char_gpt", init="gpt", data="text", overrides=["data.max_chars=20000", "model.ties=[]"])
    untied.load_state_dict({**net.state_dict(), "head.weight": tok.weight.detach().clone()})
    untied(x).pow(2).mean().backward()
    both = untied.param("tok.weight").grad + untied.param("head.weight").grad
    assert torch.allclose(net.param("tok.weight").grad, both, atol=1e-6)


# --- your own modules ------------------------------------------------------------------------------

def test_a_user_module_node_and_a_whole_user_model_get_every_parameter_feature(tmp_path):
    from runner.checkpoint.weights import load_into, read_weights, save_weights
    from runner.tracking.stats import StatsCollector

    net = runner.build(model="digits_se", data="digits", init={"rules": [
        {"name": "se_linear", "params": "se.*", "layer": "linear", "kind": "weight", "init": "zeros"},
        {"name": "by_class", "layer": "SqueezeExcite", "kind": "bias", "init": "ones"}]})
    assert "se.squeeze.weight" in net.params() and net.infos["se"].type == "module"
    report = net.init_report.by_name()
    assert report["se.excite.weight"].rule == "se_linear" and torch.all(net.param("se.excite.weight") == 0)
    assert report["se.squeeze.bias"].rule == "by_class"  # a class rule reaches the tensors inside the module
    model = runner.build(model="digits_user_model", data="digits",
                         init={"rules": [{"layer": "BatchNorm2d", "kind": "running_var", "init": "ones"},
                                         {"layer": "conv2d", "kind": "weight", "init": "xavier_uniform"}]})
    names = list(model.params())
    assert names[:2] == ["features.0.weight", "features.0.bias"] and "se.excite.bias" in names
    assert model.init_report.by_name()["features.3.weight"].init == "xavier_uniform"
    assert "features.1.running_mean" in model.buffers_by_name()
    c = StatsCollector(model, {"every_n_steps": 1, "activations": True, "histograms": {"enabled": False}})
    c.activations(True)
    model(torch.rand(4, 8, 8)).sum().backward()
    c.activations(False)
    c.before_step(None)
    metrics = c.after_step(1, 0.0, [0.1]).metrics
    assert "grad_norm/se.squeeze.weight" in metrics and "act_dead/features.2" in metrics
    assert len(metrics) == c.keys_per_step()
    save_weights(tmp_path / "w.safetensors", model)
    again = runner.build(model="digits_user_model", data="digits", seed=9)
    load_into(again, *read_weights(tmp_path / "w.safetensors"))
    assert torch.equal(again.param("head.weight"), model.param("head.weight"))


def test_ties_on_a_user_model_and_whole_blocks():
    net = runner.build(model="char_gpt", data="text", init="gpt", overrides=[
        "data.max_chars=20000", "model.vars.dim=32",
        "model.ties=[{params: [tok.weight, head.weight]}, {layers: [blocks.block-0, blocks.block-1]}]"])
    assert net.param("blocks.block-1.attn.qkv.weight") is net.param("blocks.block-0.attn.qkv.weight")
    assert net.param_aliases()["blocks.block-1.mlp.proj.bias"] == "blocks.block-0.mlp.proj.bias"
    assert summarize(net).total == sum(p.numel() for p in net.params().values())
    user = runner.build(model="digits_user_model", data="digits",
                        overrides=["+model.ties=[{params: [features.0.bias, features.1.bias]}]"])
    assert user.param("features.1.bias") is user.param("features.0.bias")
    assert runner.model.tie_map(user) == {"features.0.bias": {"aliases": ["features.1.bias"], "transposed": []}}


@pytest.mark.parametrize("target, message", [
    ("examples.modules.Nope", "model._target_: cannot import 'examples.modules.Nope': examples.modules has no attribute 'Nope'"),
    ("no_such_pkg.Model", "model._target_: cannot import 'no_such_pkg.Model': no module named 'no_such_pkg'"),
    ("tests_support.Raising", "model: tests_support.Raising raised ValueError: bad width 3"),
    ("tests_support.NotAModule", "model._target_: tests_support.NotAModule built a NotAModule, not a torch nn.Module"),
    ("tests_support.WrongShape", "model: does not fit an input of shape"),
])
def test_user_model_errors_name_the_path(target, message):
    with pytest.raises(ConfigError) as e:
        runner.build(model={"name": "u", "_target_": target, "width": 3}, data="digits")
    assert message in str(e.value)


# --- config errors of every node type ---------------------------------------------------------------

BAD_FIELDS = [  # (node, dotted field, message)
    ({"type": "linear", "out": 0}, "out", "must be a positive integer or 'auto'"),
    ({"type": "linear", "out": 2, "bias": "yes"}, "bias", "must be true or false, got 'yes'"),
    ({"type": "conv1d", "channels": -2, "kernel": 3}, "channels", "must be a positive integer, got -2"),
    ({"type": "conv2d", "channels": 4, "kernel": [3, 0]}, "kernel", "must be a positive integer or a list of them"),
    ({"type": "conv2d", "channels": 4, "kernel": 3, "padding": "sam"}, "padding", "'same' or 'valid', got 'sam'"),
    ({"type": "conv2d", "channels": 4}, "kernel", "missing required value (kernel size)"),
    ({"type": "conv2d", "channels": 4, "kernel": 3, "activation": "rleu"}, "activation",
     "unknown activation 'rleu' (did you mean 'relu'?)"),
    ({"type": "maxpool", "kernel": 2, "strid": 2}, "strid", "unknown key for 'maxpool' (did you mean 'stride'?)"),
    ({"type": "avgpool", "kernel": "2"}, "kernel", "must be a positive integer or a list of them, got '2'"),
    ({"type": "adaptive_avgpool", "size": 0}, "size", "must be a positive integer or a list of them, got 0"),
    ({"type": "batchnorm", "momentum": 2}, "momentum", "must be a number in (0, 1] or null, got 2"),
    ({"type": "groupnorm"}, "groups", "missing required value"),
    ({"type": "layernorm", "eps": 0}, "eps", "must be a positive number, got 0"),
    ({"type": "rmsnorm", "affine": 1}, "affine", "must be true or false, got 1"),
    ({"type": "embedding", "dim": 4, "vocab": "many"}, "vocab", "must be a positive integer or 'auto'"),
    ({"type": "embedding", "dim": 4, "padding_idx": -1}, "padding_idx", "must be a non-negative integer or null, got -1"),
    ({"type": "pos_embedding", "max_len": 1.5}, "max_len", "must be a positive integer, got 1.5"),
    ({"type": "attention", "heads": 2, "dropout": 1.0}, "dropout", "must be a probability in [0, 1), got 1.0"),
    ({"type": "transformer_block", "heads": 2, "norm": "batchnorm"}, "norm",
     "unknown value 'batchnorm'; choose one of layernorm, rmsnorm"),
    ({"type": "transformer_block", "heads": 2, "mlp_ratio": -1}, "mlp_ratio", "must be a positive number, got -1"),
    ({"type": "flatten", "start_dim": "1"}, "start_dim", "must be an integer, got '1'"),
    ({"type": "reshape", "shape": [1, "a"]}, "shape", "must be a list of integers"),
    ({"type": "permute"}, "dims", "missing required value"),
    ({"type": "dropout", "p": 1.5}, "p", "must be a probability in [0, 1), got 1.5"),
    ({"type": "leaky_relu", "negative_slope": "x"}, "negative_slope", "must be a finite number, got 'x'"),
    ({"type": "elu", "alpha": float("nan")}, "alpha", "must be a positive number, got 'nan'"),
    ({"type": "softmax", "dim": 1.0}, "dim", "must be an integer, got 1.0"),
    ({"type": "residual", "layers": [], "projection": "auto"}, "projection", "must be true or false"),
    ({"type": "residual", "layers": []}, "layers", "must be a non-empty list of layers"),
    ({"type": "repeat", "times": 2, "block": {"type": "linear", "out": 1}, "names": ["a.b", "c"]}, "names",
     "must be a list of names of letters, digits, _ and -"),
    ({"type": "module"}, "_target_", "missing required value"),
    ({"type": "relu", "inplace": True}, "inplace", "unknown key for 'relu'"),
    ({"type": "linear", "out": 2, "name": "a.b"}, "name", "must be a name of letters, digits, _ and -, got 'a.b'"),
    ({"type": "linear", "out": 2, "name": "enc(0)"}, "name", "must be a name of letters, digits, _ and -, got 'enc(0)'"),
]


def test_every_bad_field_of_every_node_type_is_reported_at_once_with_its_path():
    problems = check_model({"name": "bad", "layers": [node for node, _, _ in BAD_FIELDS]})
    by_path = {p.path: p.message for p in problems}
    for i, (node, field, message) in enumerate(BAD_FIELDS):
        assert message in by_path.get(f"model.layers[{i}].{field}", ""), (node, by_path)
    covered = {node["type"] for node, _, _ in BAD_FIELDS}
    assert covered >= set(NODE_TYPES) - {"sequential", "repeat", "reuse", "identity", "gelu", "tanh", "sigmoid",
                                         "silu", "log_softmax"}


SHAPE_ERRORS = [  # (layers, input, path, message): what only the data can tell
    ([{"type": "conv2d", "channels": 4, "kernel": 3}], torch.rand(2, 8), "model.layers[0].type",
     "conv2d needs inputs shaped (N, C, H, W); add a reshape before it, got an input of shape [2, 8]"),
    ([{"type": "conv2d", "channels": 4, "kernel": 3, "groups": 3}], torch.rand(2, 2, 5, 5), "model.layers[0].groups",
     "is 3, which does not divide the 2 input channels"),
    ([{"type": "conv2d", "channels": 4, "kernel": 9}], torch.rand(2, 1, 5, 5), "model.layers[0]",
     "does not fit an input of shape [2, 1, 5, 5]"),
    ([{"type": "conv1d", "channels": 4, "kernel": [3, 3]}], torch.rand(2, 1, 5), "model.layers[0].kernel",
     "has 2 values for a 1-d convolution"),
    ([{"type": "maxpool", "kernel": 2}], torch.rand(2, 8), "model.layers[0].type", "maxpool needs inputs shaped"),
    ([{"type": "groupnorm", "groups": 3}], torch.rand(2, 4, 3), "model.layers[0].groups",
     "is 3, which does not divide the 4 channels"),
    ([{"type": "embedding", "dim": 4}], torch.rand(2, 5), "model.layers[0].type",
     "embedding needs integer token ids, got float32 inputs"),
    ([{"type": "embedding", "dim": 4, "vocab": 5}], torch.tensor([[1, 9]]), "model.layers[0].vocab",
     "is 5 but the data has token ids up to 9"),
    ([{"type": "pos_embedding", "max_len": 4}], torch.rand(2, 6, 3), "model.layers[0].max_len",
     "is 4 but the input has sequences of 6"),
    ([{"type": "attention", "heads": 3}], torch.rand(2, 5, 8), "model.layers[0].heads",
     "is 3, which does not divide the 8 features"),
    ([{"type": "transformer_block", "heads": 2}], torch.rand(2, 8), "model.layers[0].type",
     "transformer_block needs inputs shaped (N, T, d)"),
    ([{"type": "flatten", "start_dim": 3}], torch.rand(2, 8), "model.layers[0].start_dim",
     "is 3, outside the 2 dimensions of the input [2, 8]"),
    ([{"type": "reshape", "shape": [3, 3]}], torch.rand(2, 8), "model.layers[0].shape",
     "[3, 3] does not hold the 8 values of each sample"),
    ([{"type": "permute", "dims": [0, 0]}], torch.rand(2, 8), "model.layers[0].dims", "is not a permutation"),
    ([{"type": "softmax", "dim": 2}], torch.rand(2, 8), "model.layers[0].dim", "is 2, outside the 2 dimensions"),
    ([{"type": "residual", "layers": [{"type": "linear", "out": 3}]}], torch.rand(2, 8), "model.layers[0].projection",
     "the body maps [2, 8] to [2, 3]; set projection: true"),
    ([{"type": "residual", "projection": True, "layers": [{"type": "flatten"}]}], torch.rand(2, 2, 4),
     "model.layers[0].projection", "changes the rank"),
    ([{"type": "linear", "out": "auto"}], torch.rand(2, 8), "model.layers[0].out", "is auto, but the data gives no"),
    ([{"type": "module", "_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}], torch.rand(2, 8),
     "model.layers[0]", "does not fit an input of shape [2, 8]"),
    ([{"type": "module", "_target_": "torch.nn.Linear", "in_feature": 3}], torch.rand(2, 8), "model.layers[0]",
     "torch.nn.Linear raised TypeError"),
]


@pytest.mark.parametrize("layers, x, path, message", SHAPE_ERRORS, ids=[str(i) for i in range(len(SHAPE_ERRORS))])
def test_shape_problems_name_the_field(layers, x, path, message):
    with pytest.raises(ConfigError) as e:
        build_model({"name": "m", "layers": layers}, x)
    assert len(e.value.problems) == 1 and e.value.problems[0].path == path
    assert message in e.value.problems[0].message


def test_readme_lists_every_layer_type_as_the_schemas_do():
    from runner.docs import layers_markdown

    readme = (REPO / "README.md").read_text()
    assert layers_markdown() in readme, "regenerate the table: python -c 'from runner.docs import layers_markdown; print(layers_markdown())'"
