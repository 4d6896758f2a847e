"""Reviewing runs: health rules on runs built to trip them, the HTML report in a real browser,
runner report, the architecture picture."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import runner
from conftest import REPO, invoke, run_main
from runner.tracking.stats import StatsCollector
from runner.tracking.tracker import Tracker
from runner.train.loop import fit

CHROMIUM = Path("/usr/lib/chromium/chromium")


class Null:
    def log(self, metrics, step):
        pass

    def review(self, review):
        self.last = review

    def flush(self):
        pass


def trained(model="d2l_mlp", init=None, data=None, train=None, activations=False):
    """Train in this process with a tracker; returns its findings, by rule and as a list."""
    prepared = runner.prepare(runner.compose([], model=model, init=init, data=data))
    cfg = {"every_n_steps": 5, "activations": activations, "histograms": {"enabled": False}}
    tracker = Tracker(StatsCollector(prepared.net, cfg), Null(), cfg)
    fit(prepared.net, prepared.data, {"epochs": 3, "progress": "quiet", **(train or {})}, tracker)
    findings = tracker.finish(0)
    return {f.rule: f for f in findings}, findings


DEEP = {"name": "deep_sigmoid", "layers": [
    {"type": "repeat", "name": "body", "times": 12, "block": {"type": "linear", "out": 16, "activation": "sigmoid"}},
    {"type": "linear", "name": "head", "out": 1}]}


def test_a_healthy_run_has_no_findings():
    by_rule, findings = trained()
    assert findings == [], [f.message for f in findings]
    by_rule, findings = trained("mlp_wide", data="digits", train={"epochs": 2})
    assert findings == [], [f.message for f in findings]


def test_vanishing_gradients_in_a_deep_sigmoid_network():
    by_rule, _ = trained(DEEP, train={"optimizer": "sgd", "lr": 0.1})
    f = by_rule["vanishing_gradients"]
    assert f.layer == "body.block-0.weight" and f.value < 1e-3 and f.step > 1
    assert "body.block-0.weight" in f.message and "head.weight" in f.message


def test_a_huge_learning_rate_gives_exploding_updates():
    linear = {"name": "linear", "layers": [{"type": "linear", "name": "a", "out": 4}, {"type": "linear", "name": "head", "out": 1}]}
    by_rule, _ = trained(linear, train={"lr": 1.0})  # no activation to saturate or die: the updates stay huge
    f = by_rule["update_too_large"]
    assert f.value > 0.03 and f.layer in ("a.weight", "head.weight") and "lower train.lr" in f.message


@pytest.mark.parametrize("activations", [False, True])
def test_a_dead_relu_layer_from_a_negative_bias_edit(activations):
    by_rule, _ = trained(init={"edits": [{"param": "hidden.bias", "value": -10.0}]}, activations=activations)
    f = by_rule["dead_relu"]
    assert f.layer == "hidden"
    if activations:
        assert f.value == 1.0 and "100% of its ReLU outputs are zero" in f.message
    else:
        assert "no gradient reaches its weights" in f.message


def test_weights_that_stopped_moving():
    by_rule, _ = trained(train={"lr": 1e-12})
    assert by_rule["stopped"].value < 1e-8


def test_a_schedule_annealed_to_zero_is_not_a_stopped_layer():
    """Cosine annealing ends with a learning rate of zero: the last updates are tiny on purpose, so
    the "too small" rules judge the steps before the rate decayed; a rate that is tiny from the
    start is still flagged."""
    by_rule, findings = trained(train={"schedule": "cosine"})
    assert findings == [], [f.message for f in findings]
    by_rule, _ = trained(train={"schedule": "cosine", "lr": 1e-7})
    f = by_rule["update_too_small"]
    assert f.value < 1e-5 and "before the learning-rate schedule decayed" in f.message


def test_non_finite_steps_are_a_finding():
    by_rule, _ = trained(data={"kind": "uniform_regression", "nan_at": 3}, train={"nonfinite": {"policy": "skip"}})
    f = by_rule["nonfinite"]
    assert f.value == 3 and "3 non-finite step(s) skipped" in f.message


def test_inspect_draws_the_architecture(tmp_path):
    r = run_main("task=inspect", "model=tied_autoencoder", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    svg = (tmp_path / "architecture.svg").read_text()
    assert svg.startswith("<svg") and 'data-layer="encoder"' in svg and 'data-layer="decoder"' in svg
    assert 'data-tie="encoder.weight"' in svg and "tied: encoder.weight" in svg
    model = json.loads((tmp_path / "model.json").read_text())
    assert [t["name"] for t in model["tensors"]] == ["encoder.weight", "encoder.bias", "decoder.bias"]


def browse(page_path: Path, shot: Path):
    """Open a report in headless Chromium: (console errors, what the page shows)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        seen = page.evaluate("""() => ({
            rows: [...document.querySelectorAll('tr[data-layer]')].map(r => r.dataset.layer),
            charts: Object.fromEntries([...document.querySelectorAll('svg.chart')].map(s =>
                [s.dataset.chart, [...s.querySelectorAll('path')].filter(p => p.getAttribute('d').length > 10).length])),
            box: Object.fromEntries([...document.querySelectorAll('svg.chart')].map(s =>
                [s.dataset.chart, s.getBoundingClientRect().height])),
            maps: [...document.querySelectorAll('img[data-map]')].map(i => i.naturalWidth),
            header: document.querySelector('.sub').textContent,
            architecture: document.querySelectorAll('svg.architecture g.layer').length,
        })""")
        page.screenshot(path=str(shot), full_page=False)
        browser.close()
    return errors, seen


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_renders_in_a_browser_and_covers_a_resumed_run(store, tmp_path):
    args = [f"tracking.uri={store.uri}", "train.progress=quiet", "tracking.system_metrics=false",
            "model=d2l_nested"]
    r = run_main(*args, "train.epochs=1", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = store.only_run().info.run_id
    order = [t["name"] for t in json.loads((tmp_path / "a" / "model.json").read_text())["tensors"]]
    errors, seen = browse(tmp_path / "a" / "report.html", tmp_path / "first.png")
    assert errors == []
    assert seen["rows"] == order  # network order, input first
    assert all(seen["charts"][c] > 0 and seen["box"][c] > 100 for c in ("gradient-flow", "update-ratio", "loss"))
    assert len(seen["maps"]) == 2 * len(order) and all(w >= 1000 for w in seen["maps"])  # 2x today's 600 px, legible
    assert seen["architecture"] > 0 and "step 13 (steps 1–10 logged)" in seen["header"]
    r = run_main(*args, "train.epochs=2", f"train.resume={run_id}", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.returncode == 0, r.stderr[-2000:]
    errors, seen = browse(tmp_path / "b" / "report.html", tmp_path / "second.png")
    assert errors == [] and "step 26 (steps 1–20 logged)" in seen["header"]  # the whole run, not its second part
    assert (tmp_path / "second.png").stat().st_size > 20_000
    artifacts = {a.path for a in store.client.list_artifacts(run_id)}
    assert "report.html" in artifacts


@pytest.mark.slow
def test_findings_reach_tags_closing_lines_and_runner_report(store, tmp_path):
    r = run_main(f"tracking.uri={store.uri}", f"hydra.run.dir={tmp_path / 'run'}", "train.progress=quiet",
                 "tracking.system_metrics=false", "train.epochs=2", "tracking.histograms.enabled=false",
                "+init.edits=[{param: hidden.bias, value: -10}]")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "health: 2 finding(s)" in r.stdout and "- dead_relu: hidden: no gradient reaches its weights" in r.stdout
    assert "- no_gradient: output.weight gets no gradient" in r.stdout  # its inputs are all zero now
    run = store.only_run()
    assert run.data.tags["runner.health"] == "2 finding(s): dead_relu, no_gradient"
    assert "hidden" in run.data.tags["runner.health.dead_relu"]
    version = store.client.search_model_versions("name='d2l_mlp'")[0]
    assert version.tags["overrides"] == "train.epochs=2 +init.edits=[{param: hidden.bias, value: -10}]"
    assert version.description.startswith("train.epochs=2 +init.edits") and "step 26" in version.description
    from runner.tracking.review import main as report

    for ref in (run.info.run_id, "models:/d2l_mlp/1"):
        code, out, err = invoke(lambda: report([ref, "--tracking-uri", store.uri]), [], "runner report")
        assert code == 0, err
        rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
        assert rows == ["hidden.weight", "hidden.bias", "output.weight", "output.bias"]
        assert "2 finding(s)" in out and "dead_relu" in out
    bad = subprocess.run([sys.executable, "-m", "runner", "report", "0" * 32, "--tracking-uri", store.uri],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error: no run" in bad.stderr and "Traceback" not in bad.stderr
