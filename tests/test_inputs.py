"""A corpus of bad inputs: configs, command lines, data files, checkpoints, registry references and
stores. Every one ends with a short message that names the offending path or file, a non-zero
exit status, no stack trace, no MLflow run left RUNNING and nothing registered.

The commands run in this process (the same ``main`` functions the console scripts call; the
subprocess tests elsewhere prove that those exit with these statuses), against one store."""
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

import runner
from runner.checkpoint.store import CheckpointStore
from runner.checkpoint.weights import save_weights
from conftest import invoke

TRAIN = ["train.epochs=1", "train.progress=quiet", "tracking.system_metrics=false", "tracking.histograms.enabled=false"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, template_db):
    """One store and the files the corpus reads: data files, weights, checkpoints."""
    from conftest import Store

    root = tmp_path_factory.mktemp("inputs")
    (root / "outputs").mkdir()
    shutil.copy(template_db, root / "outputs" / "mlflow.db")
    files = root / "files"
    files.mkdir()
    (files / "empty.csv").write_text("")
    (files / "words.csv").write_text("1,2,3\n4,five,6\n")
    (files / "one_column.csv").write_text("1\n2\n3\n")
    (files / "nan_input.csv").write_text("1,2,3\n4,nan,6\nnan,8,9\n")
    (files / "huge_target.csv").write_text("1,2,3\n4,5,1e39\n")
    images = np.zeros((4, 1, 2, 2), dtype="float32")
    images[2, 0, 1, 0] = np.inf
    np.savez(files / "inf_image.npz", x=images, y=np.zeros(4))
    (files / "notes.txt").write_text("hello")
    (files / "tiny.txt").write_text("abc")
    (files / "noise.npz").write_bytes(b"this is not an archive")
    np.savez(files / "scalar.npz", x=np.array(3.0), y=np.array(1.0))
    np.savez(files / "no_y.npz", x=np.zeros((4, 2)))
    np.savez(files / "strings.npz", x=np.array([["a", "b"]] * 4), y=np.zeros(4))
    np.savez(files / "short.npz", x=np.zeros((5, 2)), y=np.zeros(4))
    for name, labels in (("negative", [0, 1, -1, 2]), ("fractional", [0, 1, 1.5, 2]), ("large", [0, 1, 5, 2])):
        np.savez(files / f"{name}.npz", x=np.random.rand(4, 3).astype("float32"), y=np.array(labels))
    (files / "a_folder").mkdir()
    (files / "not_a_db.db").write_text("a text file")
    net = runner.build(model="d2l_mlp")
    save_weights(files / "good.safetensors", net)
    data = (files / "good.safetensors").read_bytes()
    (files / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with open(files / "pickle.safetensors", "wb") as f:
        pickle.dump({"x": 1}, f)
    bad = {k: v.detach().clone() for k, v in net.tensors().items()}
    bad["hidden.bias"][0] = float("nan")
    from safetensors.torch import save_file

    save_file(bad, str(files / "nan.safetensors"))
    store = CheckpointStore(files / "ckpts")
    entry = store.save(5, lambda d: (save_weights(d / "weights.safetensors", net, 5), torch.save({}, d / "state.pt")))
    corrupt = CheckpointStore(files / "corrupt")
    c = corrupt.save(5, lambda d: (save_weights(d / "weights.safetensors", net, 5), torch.save({}, d / "state.pt")))
    w = c.path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\x00" * 8)
    evil = CheckpointStore(files / "evil")
    evil.save(5, lambda d: (save_weights(d / "weights.safetensors", net, 5),
                            (d / "state.pt").write_bytes(pickle.dumps({"optimizer": print}))))
    other = runner.build(model="d2l_nested")
    CheckpointStore(files / "other").save(5, lambda d: (save_weights(d / "weights.safetensors", other, 5),
                                                          torch.save({}, d / "state.pt")))
    (files / "spool.jsonl").write_text("not json\n{}\n")
    return {"root": root, "store": Store(root / "outputs" / "mlflow.db"), "files": files, "entry": entry.path,
            "corrupt": c.path}


F = "{files}"  # in a case's arguments: the folder of the corpus's files
S = "{store}"  # the store's URI
RUN = "0123456789abcdef0123456789abcdef"

# (id, command, arguments, exit status, what the message must say)
CASES = [
    # config values, checked before anything runs
    ("seed-negative", "runner", ["seed=-1"], 2, "seed: must be a non-negative integer below 2**63, got -1"),
    ("seed-huge", "runner", ["seed=99999999999999999999"], 2, "seed: must be a non-negative integer below 2**63"),
    ("data-seed-text", "runner", ["data.seed=abc"], 2, "data.seed: must be a non-negative integer"),
    ("lr-nan", "runner", ["train.lr=nan"], 2, "train.lr: must be a positive number, got 'nan'"),
    ("lr-inf", "runner", ["train.lr=inf"], 2, "train.lr: must be a positive number, got 'inf'"),
    ("lr-huge", "runner", ["train.lr=1e30", "train.optimizer=sgd", "train.nonfinite.policy=skip"], 1,
     "training stopped: validation gives val/loss inf"),
    ("lr-zero", "runner", ["train.lr=0"], 2, "train.lr: must be a positive number, got 0"),
    ("optimizer-typo", "runner", ["train.optimizer=adamm"], 2, "train.optimizer: unknown optimizer 'adamm' (did you mean 'adam'?)"),
    ("momentum-negative", "runner", ["train.optimizer=sgd", "train.optimizer_args={momentum: -0.5}"], 2,
     "train.optimizer_args: sgd refuses these arguments: Invalid momentum value"),
    ("momentum-on-adam", "runner", ["train.optimizer_args={momentum: 0.9}"], 2,
     "train.optimizer_args: adam refuses these arguments"),
    ("step-size-zero", "runner", ["train.schedule=step", "train.schedule_args={step_size: 0}"], 2, "train.schedule_args: the step schedule refuses"),
    ("gamma-string", "runner", ["train.schedule=exponential", "train.schedule_args={gamma: abc}"], 2, "train.schedule_args"),
    ("cosine-unknown-arg", "runner", ["train.schedule=cosine", "train.schedule_args={T_mx: 3}"], 2, "train.schedule_args"),
    ("schedule-typo", "runner", ["train.schedule=cosin"], 2, "train.schedule: unknown schedule 'cosin' (did you mean 'cosine'?)"),
    ("epochs-zero", "runner", ["train.epochs=0"], 2, "train.epochs: must be a positive integer, got 0"),
    ("max-steps-negative", "runner", ["train.max_steps=-3"], 2, "train.max_steps: must be a positive integer or null"),
    ("clip-zero", "runner", ["train.grad_clip=0"], 2, "train.grad_clip: must be a positive number or null"),
    ("accumulate-zero", "runner", ["train.accumulate=0"], 2, "train.accumulate: must be a positive integer"),
    ("precision-typo", "runner", ["train.precision=fp8"], 2, "train.precision: unknown precision 'fp8'"),
    ("ddp-alone", "runner", ["train.strategy=ddp"], 2, "train.strategy: ddp needs several processes"),
    ("cuda-missing", "runner", ["train.device=cuda"], 2, "train.device: cuda was asked for but no CUDA device"),
    ("policy-typo", "runner", ["train.nonfinite.policy=sometimes"], 2, "train.nonfinite.policy: unknown value 'sometimes'"),
    ("patience-zero", "runner", ["train.nonfinite.patience=0"], 2, "train.nonfinite.patience: must be a positive integer"),
    ("loss-typo", "runner", ["train.loss=hinge"], 2, "train.loss: unknown value 'hinge'"),
    ("loss-for-classes", "runner", ["train.loss=cross_entropy"], 2, "train.loss: cross_entropy needs class labels"),
    ("resume-nowhere", "runner", ["train.resume=/nowhere/at/all"], 2, "train.resume: no committed checkpoint at /nowhere/at/all"),
    ("resume-unknown-run", "runner", [f"train.resume={RUN}"], 2, f"train.resume: no MLflow run {RUN}"),
    ("resume-other-model", "runner", [f"train.resume={F}/other"], 2, "was written for a different model config"),
    ("resume-pickle-state", "runner", [f"train.resume={F}/evil"], 2, "state.pt was refused: it is not a plain training-state file"),
    ("resume-corrupt", "runner", [f"train.resume={F}/corrupt"], 2, "does not match its checksum"),
    ("every-zero", "runner", ["tracking.every_n_steps=0"], 2, "tracking.every_n_steps: must be a positive integer, got 0"),
    ("every-null", "runner", ["tracking.every_n_steps=null"], 2, "tracking.every_n_steps: must be a positive integer, got None"),
    ("stat-typo", "runner", ["tracking.stats.grads=[nrom]"], 2, "tracking.stats.grads: unknown statistic 'nrom' (did you mean 'norm'?)"),
    ("key-budget", "runner", ["tracking.max_keys=5"], 2, "tracking.max_keys: this model would log"),
    ("experiment-empty", "runner", ["tracking.experiment=''"], 2, "tracking.experiment: must be a non-empty string"),
    ("sample-zero", "runner", ["tracking.histograms.sample=0"], 2, "tracking.histograms.sample: must be a positive integer"),
    ("report-negative", "runner", ["tracking.report.every_n_epochs=-1"], 2, "tracking.report.every_n_epochs: must be a non-negative integer"),
    ("keep-last-zero", "runner", ["checkpoint.keep_last=0"], 2, "checkpoint.keep_last: must be a positive integer"),
    ("best-mode-typo", "runner", ["checkpoint.best_mode=maximum"], 2, "checkpoint.best_mode: unknown value 'maximum'"),
    ("model-name-slash", "runner", ["model.name=a/b"], 2, "model.name: cannot name a registered model: Invalid model name 'a/b'"),
    ("registered-name-colon", "runner", ["checkpoint.registered_name=x:y"], 2, "checkpoint.registered_name: cannot name a registered model"),
    ("inspect-unknown-key", "runner", ["+inspect.shw=1"], 2, "inspect.shw: unknown key (did you mean 'show'?)"),
    ("task-typo", "runner", ["task=inspekt"], 2, "task: unknown task 'inspekt' (did you mean 'inspect'?)"),
    ("group-deleted", "runner", ["~model"], 2, "model: missing config group"),
    ("interpolation", "runner", ["seed=${nope}"], 2, "seed: Interpolation key 'nope' not found"),
    ("calc-bad", "runner", ["+model.vars.x=${calc:1/0}"], 2, "model.vars.x"),
    ("param-key", "runner", ["+train.optimizer_args={'bad key!': 1}", "train.optimizer=sgd"], 2, "train.optimizer_args"),
    # the command line itself (Hydra's own errors, said the runner's way)
    ("preset-unknown", "runner", ["model=nope"], 2, "model: no preset named 'nope'"),
    ("preset-typo", "runner", ["init=d2l_norml"], 2, "init: no preset named 'd2l_norml' (did you mean 'd2l_normal'?)"),
    ("key-unknown", "runner", ["train.lrr=0.1"], 2, "train.lrr: unknown key (did you mean 'lr'?)"),
    ("data-key-unknown", "runner", ["data.autoencod=true"], 2, "data.autoencod: unknown key for 'kind uniform_regression' (did you mean 'autoencode'?)"),
    ("data-key-unparsable", "runner", ["data.seed=[1,2"], 2, "cannot parse the override 'data.seed=[1,2'"),
    ("init-rule-index-outside", "runner", ["init.rules.9.init=zeros"], 2, "Error merging override init.rules.9.init=zeros"),
    ("data-key-other-kind", "runner", ["data=text", "data.classes=3"], 2, "data.classes: unknown key for 'kind text'"),
    ("init-key-unknown", "runner", ["init.edit=[]"], 2, "init.edit: unknown key (did you mean 'edits'?)"),
    ("override-unparsable", "runner", ["train.lr=[1,2"], 2, "cannot parse the override 'train.lr=[1,2'"),
    ("launcher-unknown", "runner", ["hydra/launcher=nope"], 2, "hydra/launcher: no preset named 'nope'"),
    ("list-index", "runner", ["+model.layers.9.type=relu"], 2, "model.layers[9]"),
    # the model
    ("layer-type-typo", "runner", ["model.layers.1.type=lnear"], 2, "model.layers[1].type: unknown layer type 'lnear' (did you mean 'linear'?)"),
    ("out-zero", "runner", ["model.layers.1.out=0"], 2, "model.layers[1].out: must be a positive integer or 'auto'"),
    ("layer-key-typo", "runner", ["+model.layers.1.otu=3"], 2, "model.layers[1].otu: unknown key for 'linear' (did you mean 'out'?)"),
    ("start-dim", "runner", ["+model.layers.0.start_dim=5"], 2, "model.layers[0].start_dim: is 5, outside the 2 dimensions"),
    ("layer-name-chars", "runner", ["model.layers.1.name='enc(0)'"], 2, "model.layers[1].name: must be a name of letters, digits, _ and -"),
    ("tie-typo", "runner", ["+model.ties=[{params: [hidden.wieght, output.weight]}]"], 2,
     "model.ties[0].params: no parameter named 'hidden.wieght' (did you mean 'hidden.weight'?)"),
    ("reshape-wrong-data", "runner", ["model=digits_cnn"], 2, "model.layers[0].shape: [1, 8, 8] does not hold the 4 values"),
    ("embedding-on-floats", "runner", ["model=char_gpt", "model.layers.1.max_len=8"], 2, "model.layers[0].type: embedding needs integer token ids"),
    ("user-model-raises", "runner", ["+model._target_=tests_support.Raising", "+model.width=3", "~model.layers"], 2,
     "model: tests_support.Raising raised ValueError: bad width 3"),
    ("user-module-missing", "runner", ["model.layers.1.type=module", "+model.layers.1._target_=no_such_pkg.Mod"], 2,
     "model.layers[1]._target_: cannot import 'no_such_pkg.Mod': no module named 'no_such_pkg'"),
    # init
    ("rule-selects-nothing", "runner", ["init=d2l_xavier_42", "model=d2l_nested"], 2, "init.rules[0]: selects no parameter"),
    ("init-typo", "runner", ["init.rules=[{params: hidden.weight, init: xavier_unifrom}]"], 2,
     "init.rules[0].init: unknown initializer 'xavier_unifrom' (did you mean 'xavier_uniform'?)"),
    ("init-module-missing", "runner", ["init.rules=[{params: hidden.weight, init: no.such.module.fn}]"], 2,
     "init.rules[0].init: unknown initializer 'no.such.module.fn': no module named 'no'"),
    ("init-raises", "runner", ["init.rules=[{params: hidden.weight, init: tests_support.raising_init}]"], 2,
     "init.rules[0]: tests_support.raising_init cannot initialise hidden.weight (shape [4, 4]): KeyError: 'no such scale'"),
    ("init-fills-nan", "runner", ["init.rules=[{params: hidden.weight, init: tests_support.nan_init}]"], 2,
     "init.rules[0]: tests_support.nan_init filled hidden.weight with non-finite values"),
    ("edit-nan", "runner", ["init.edits=[{param: hidden.weight, value: nan}]"], 2, "init.edits[0].value: must be a finite number, got 'nan'"),
    ("edit-typo", "runner", ["init.edits=[{param: hidden.wieght, value: 1}]"], 2, "init.edits[0].param: no parameter named 'hidden.wieght'"),
    ("edit-index", "runner", ["init.edits=[{param: hidden.bias, index: '9', value: 1}]"], 2, "init.edits[0].index: hidden.bias has shape [4]"),
    ("init-expression", "runner", ["init.rules=[{params: hidden.weight, init: normal, args: {std: '=1/0'}}]"], 2,
     "init.rules[0].args: for hidden.weight"),
    ("warm-start-missing", "runner", ["init.warm_start={source: /nowhere.safetensors}"], 2,
     "init.warm_start.source: /nowhere.safetensors: no such file or folder"),
    ("warm-start-nan", "runner", [f"+init.warm_start={{source: {F}/nan.safetensors}}"], 2, "non-finite values (NaN/Inf) in hidden.bias"),
    # data files
    ("file-missing", "runner", ["data=file", "data.path=/nowhere.npz"], 2, "data.path: no such file: /nowhere.npz"),
    ("file-suffix", "runner", ["data=file", f"data.path={F}/notes.txt"], 2, "data.path: must be a .npz or .csv file"),
    ("csv-empty", "runner", ["data=file", f"data.path={F}/empty.csv"], 2, "empty.csv cannot be read"),
    ("csv-words", "runner", ["data=file", f"data.path={F}/words.csv"], 2, "words.csv cannot be read"),
    ("csv-one-column", "runner", ["data=file", f"data.path={F}/one_column.csv"], 2, "one_column.csv has 1 column(s)"),
    ("too-few-logits", "runner", ["data=digits", "model=d2l_mlp"], 2,
     "model: outputs 1 value(s) per sample, but the data has 10 classes; set the last layer's out to 10 (or auto)"),
    ("regression-too-wide", "runner", ["model=tied_autoencoder"], 2,
     "model: outputs 4 value(s) per sample, but the data's targets have 1; set the last layer's out to 1 (or auto), "
     "or train it to reproduce its input: data.autoencode=true"),
    ("regression-too-narrow", "runner", ["data.autoencode=true"], 2,
     "model: outputs 1 value(s) per sample, but the data's targets have 4; set the last layer's out to 4 (or auto)"),
    ("logits-shape", "runner", ["data=classification", "model.layers=[{type: linear, out: 6}, {type: reshape, shape: [2, 3]}]"], 2,
     "model: outputs shape [2, 3] per sample, but a classifier needs (N, 3) logits"),
    ("regression-shape", "runner", ["model.layers=[{type: reshape, shape: [2, 2]}]"], 2,
     "model: outputs shape [2, 2] per sample, but the data's targets are 1 value(s) per sample"),
    ("csv-nan-input", "runner", ["data=file", f"data.path={F}/nan_input.csv"], 2,
     "nan_input.csv: 2 NaN or infinite value(s) in inputs, the first at sample 1, column 1 (nan)"),
    ("csv-huge-target", "runner", ["data=file", f"data.path={F}/huge_target.csv"], 2,
     "huge_target.csv: 1 NaN or infinite value(s) in targets, the first at sample 1 (too large for float32)"),
    ("npz-inf-image", "runner", ["data=file", f"data.path={F}/inf_image.npz", "data.task=classification"], 2,
     "inf_image.npz: 1 NaN or infinite value(s) in x, the first at sample 2, position [0, 1, 0] (inf)"),
    ("npz-noise", "runner", ["data=file", f"data.path={F}/noise.npz"], 2, "noise.npz cannot be read"),
    ("npz-scalar", "runner", ["data=file", f"data.path={F}/scalar.npz"], 2, "scalar.npz: x is a single value (a 0-d array)"),
    ("npz-no-y", "runner", ["data=file", f"data.path={F}/no_y.npz"], 2, "no_y.npz has no array 'y' (arrays: x)"),
    ("npz-strings", "runner", ["data=file", f"data.path={F}/strings.npz"], 2, "strings.npz: x holds <U1 values; only numbers"),
    ("npz-lengths", "runner", ["data=file", f"data.path={F}/short.npz"], 2, "short.npz has 5 inputs but 4 targets"),
    ("labels-negative", "runner", ["data=file", f"data.path={F}/negative.npz", "data.task=classification"], 2,
     "negative.npz: class labels must be 0 or more; sample 2 has -1"),
    ("labels-fractional", "runner", ["data=file", f"data.path={F}/fractional.npz", "data.task=classification"], 2,
     "fractional.npz: class labels must be whole numbers; sample 2 has 1.5"),
    ("labels-out-of-range", "runner", ["data=file", f"data.path={F}/large.npz", "data.task=classification",
                                       "data.classes=3"], 2, "large.npz: label 5 is out of range for data.classes=3"),
    ("text-missing", "runner", ["data=text", "data.path=/nowhere.txt", "model=char_gpt"], 2, "data.path: no such file: /nowhere.txt"),
    ("text-tiny", "runner", ["data=text", f"data.path={F}/tiny.txt", "model=char_gpt"], 2, "tiny.txt has 3 characters"),
    ("nan-at-outside", "runner", ["data.nan_at=999999"], 2, "data.nan_at: is 999999 but the data has 512 samples"),
    ("val-fraction-one", "runner", ["data.val_fraction=1.0"], 2, "data.val_fraction: must be a number in [0, 1), got 1.0"),
    ("batch-zero", "runner", ["data.batch_size=0"], 2, "data.batch_size: must be a positive integer, got 0"),
    # stores
    ("store-scheme", "runner", ["tracking.uri=foo://bar"], 2, "tracking.uri: MLflow has no store for 'foo://bar'"),
    ("store-unmakeable", "runner", ["tracking.uri=sqlite:////proc/nowhere/mlflow.db"], 2,
     "tracking.uri: cannot create the folder of the sqlite store /proc/nowhere"),
    ("store-under-a-file", "runner", ["tracking.uri=sqlite:////etc/passwd/mlflow.db"], 2, "tracking.uri: cannot create the folder"),
    ("store-is-a-folder", "runner", [f"tracking.uri=sqlite:///{F}/a_folder"], 2, "a_folder is a folder, not a sqlite database file"),
    ("store-not-a-db", "runner", [f"tracking.uri=sqlite:///{F}/not_a_db.db"], 2, "tracking.uri: cannot open the store at sqlite:///"),
    ("store-unreachable", "runner", ["tracking.uri=http://127.0.0.1:9", "tracking.http_timeout_s=2"], 2,
     "tracking.uri: cannot open the store at http://127.0.0.1:9"),
    ("store-secret", "runner", ["tracking.uri=http://me:hunter2@127.0.0.1:9", "tracking.http_timeout_s=2"], 2,
     "http://me:***@127.0.0.1:9"),
    ("sweep-store", "runner", ["-m", "tracking.uri=foo://bar", "train.lr=0.1,0.01"], 2, "tracking.uri: MLflow has no store"),
    # runner-weights and its references
    ("weights-missing", "weights", ["show", "/nowhere/w.safetensors"], 2, "/nowhere/w.safetensors: no such file or folder"),
    ("weights-truncated", "weights", ["show", f"{F}/truncated.safetensors"], 2, "truncated.safetensors is not a readable safetensors file"),
    ("weights-pickle", "weights", ["show", f"{F}/pickle.safetensors"], 2, "pickle.safetensors is not a readable safetensors file"),
    ("weights-corrupt-entry", "weights", ["show", f"{F}/corrupt"], 2, "does not match its checksum"),
    ("weights-no-model", "weights", ["--tracking-uri", S, "show", "models:/nope/1"], 2, "models:/nope/1"),
    ("weights-no-alias", "weights", ["--tracking-uri", S, "show", "models:/nope@best"], 2, "models:/nope@best"),
    ("weights-no-run", "weights", ["--tracking-uri", S, "show", f"runs:/{RUN}/checkpoints/final"], 2, f"runs:/{RUN}"),
    ("weights-pattern", "weights", ["show", f"{F}/good.safetensors", "nothing.*"], 2, "no parameter in"),
    ("diff-missing", "weights", ["diff", f"{F}/good.safetensors", "/nowhere"], 2, "/nowhere: no such file or folder"),
    ("export-nan", "weights", ["export", f"{F}/nan.safetensors", "--out", f"{F}/x.npz"], 2,
     "non-finite values (NaN/Inf) in hidden.bias"),
    ("export-suffix", "weights", ["export", f"{F}/good.safetensors", "--out", f"{F}/x.txt"], 2, "--out must end in .safetensors or .npz"),
    ("weights-store-scheme", "weights", ["--tracking-uri", "foo://bar", "list"], 2, "MLflow has no store for 'foo://bar'"),
    ("report-no-run", "report", ["--tracking-uri", S, RUN], 2, f"no run '{RUN}' in the store"),
    ("report-no-model", "report", ["--tracking-uri", S, "models:/nope/1"], 2, "models:/nope/1"),
    ("spool-missing", "spool", ["/nowhere/mlflow_spool.jsonl"], 2, "/nowhere/mlflow_spool.jsonl: no such spool file"),
    ("spool-garbage", "spool", [f"{F}/spool.jsonl"], 2, "spool.jsonl:1: not a spool record"),
]


def test_the_corpus_is_large_and_covers_every_kind():
    kinds = {c[1] for c in CASES}
    assert len(CASES) >= 80 and kinds == {"runner", "weights", "report", "spool"}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. numpy's overflow on the way to the message
@pytest.mark.parametrize("name, command, args, status, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, tmp_path, monkeypatch, name, command, args, status, message):
    files, store = world["files"], world["store"]
    args = [a.replace(F, str(files)).replace(S, store.uri) for a in args]
    message = message.replace(F, str(files))
    monkeypatch.chdir(world["root"])
    monkeypatch.syspath_prepend(str(world["root"].parent.parent))
    if command == "runner":
        from runner.cli import main

        multirun = [a for a in args if a == "-m"]
        rest = [a for a in args if a != "-m"]
        place = f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}"
        uri = [] if any(a.startswith("tracking.uri=") for a in rest) else [f"tracking.uri={store.uri}"]
        code, out, err = invoke(main, [*multirun, *uri, place, *TRAIN, *rest])
    elif command == "weights":
        from runner.checkpoint.cli import main

        code, out, err = invoke(main, args, "runner-weights")
    elif command == "report":
        from runner.tracking.review import main

        code, out, err = invoke(lambda: main(sys.argv[1:]), args, "runner report")
    else:
        from runner.tracking.spool import main

        code, out, err = invoke(lambda: main(sys.argv[1:]), args)
    assert code == status, (out[-1000:], err[-1000:])
    assert message in err, err[-2000:]
    assert "Traceback" not in err + out and "hunter2" not in err + out
    assert len(err.strip().splitlines()) <= 12  # short
    running = [r for r in store.runs() if r.info.status == "RUNNING"]
    assert running == []
    assert store.client.search_registered_models() == []
