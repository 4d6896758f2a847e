"""The tracker the training loop talks to: statistics on logging steps, metrics at epoch ends, the
run's history for its report; everything handed to a sink that delivers it off the training thread.

Metrics go to MLflow under display names (``runner.tracking.keys``); the learning rate only when
it changes. The tracker keeps a history of every logging step's statistics and histogram samples
(bfloat16, one tensor per step) for at most ``2 * MAX_COLUMNS`` steps: past that it drops every
other one and keeps every second step from then on, so a long run costs bounded memory and the
history still spans it. The history travels in checkpoints, so a resumed run's report and heat
maps cover the whole run. At the end (and every ``tracking.report.every_n_epochs`` epochs) it
sends the history to the writer, which draws the heat maps and the HTML report there, off the
training process.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from runner.tracking.health import ModelInfo, diagnose
from runner.tracking.keys import KeyNames, display_all
from runner.tracking.stats import LoggedStep, StatsCollector, lr_key

MAX_COLUMNS = 64


class Tracker:
    def __init__(self, collector: StatsCollector, sink: Any, cfg: Any = None, meta: dict | None = None):
        """``cfg``: the ``tracking`` config; ``meta``: what the HTML report says about the run
        (model, init report, run id, directory...), or None for no report."""
        from runner.tracking.config import TrackingConfig

        cfg = TrackingConfig.of(cfg or {}, "tracking")
        self.collector = collector
        self.sink = sink
        self.hist_on = collector.sample_size > 0  # 0 when tracking.histograms.enabled is false
        self.bins = cfg.histograms.bins
        self.every_n_epochs = cfg.report.every_n_epochs
        self.meta = meta
        self.model = ModelInfo.of(collector.net)
        self.names = KeyNames.for_model(collector.names, [l["name"] for l in self.model.layers])
        self.history: list[LoggedStep] = []   # statistics, and samples in bfloat16
        self.epochs: list[tuple[int, dict]] = []
        self.skips: list[int] = []
        self._stride = 1                       # keep every n-th logging step
        self._logged = 0
        self._lrs: dict[str, float] = {}

    # called by the loop ---------------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        self.collector.to(device)

    def due(self, step: int) -> bool:
        return self.collector.due(step)

    def activations(self, on: bool) -> None:
        self.collector.activations(on)

    def before_step(self, grad_norm=None) -> None:
        self.collector.before_step(grad_norm)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Send runner metrics to the sink under their display names."""
        self.sink.log(display_all(self.names, metrics), step)

    def after_step(self, step: int, loss, lrs: list[float]) -> None:
        logged = self.collector.after_step(step, loss, lrs)
        metrics = logged.metrics
        keys = [lr_key(i) for i in range(len(lrs))]
        unchanged = {k for k in keys if self._lrs.get(k) == metrics[k]}
        self._lrs.update((k, metrics[k]) for k in keys)
        if unchanged:  # a constant rate is logged once
            metrics = {k: v for k, v in metrics.items() if k not in unchanged}
        self.log(metrics, step)
        self._logged += 1
        if self._logged % self._stride == 0:
            samples = logged.samples.to(torch.bfloat16) if self.hist_on and logged.samples is not None else None
            self.history.append(LoggedStep(step, logged.metrics, samples, logged.layout))
            if len(self.history) >= 2 * MAX_COLUMNS:
                self.history = self.history[1::2]
                self._stride *= 2

    def state(self) -> dict:
        """The history, for a checkpoint's training state (tensors and plain values)."""
        keys = sorted({k for h in self.history for k in h.metrics})
        values = torch.tensor([[h.metrics.get(k, math.nan) for k in keys] for h in self.history],
                              dtype=torch.float64) if self.history else torch.zeros(0)
        return {"steps": [h.step for h in self.history], "keys": keys, "values": values,
                "samples": [h.samples for h in self.history],
                "layouts": [[[k, n] for k, n in h.layout] for h in self.history],
                "stride": self._stride, "logged": self._logged, "epochs": [[s, m] for s, m in self.epochs],
                "skips": list(self.skips), "lrs": dict(self._lrs)}

    def load_state(self, state: dict | None) -> None:
        if not state:
            return
        keys, values = state.get("keys", []), state.get("values")
        rows = values.tolist() if isinstance(values, torch.Tensor) and values.numel() else [[] for _ in state["steps"]]
        self.history = [LoggedStep(step, {k: v for k, v in zip(keys, row) if not math.isnan(v)}, samples,
                                   [(k, int(n)) for k, n in layout])
                        for step, row, samples, layout in zip(state["steps"], rows, state["samples"], state["layouts"])]
        self._stride, self._logged = int(state["stride"]), int(state["logged"])
        self.epochs = [(int(s), dict(m)) for s, m in state.get("epochs", [])]
        self.skips = [int(s) for s in state.get("skips", [])]
        self._lrs = dict(state.get("lrs", {}))

    def flush(self) -> None:
        """Before a checkpoint: everything logged so far goes to the writer process."""
        self.sink.flush()

    def skipped(self, step: int, count: int) -> None:
        self.skips.append(step)
        self.log({"train/nonfinite_steps": float(count)}, step)

    def epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append((step, dict(metrics)))
        self.log({**metrics, "train/epoch": float(epoch)}, step)
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.render(step)

    def findings(self):
        return diagnose(self.model, [(h.step, h.metrics) for h in self.history], self.skips)

    def finish(self, step: int) -> list:
        """The final report and heat maps (drawn off the training thread); returns the findings."""
        findings = self.findings()
        if self.history and (not self.epochs or self._rendered != step):
            self.render(step, findings)
        self.collector.close()
        return findings

    _rendered = -1

    def render(self, step: int, findings: list | None = None) -> None:
        """Send the history to the writer, which draws the heat maps and the report."""
        self._rendered = step
        if not getattr(self.sink, "draws", True):
            return
        series: dict[str, tuple[list[int], list]] = {}
        if self.hist_on:
            for logged in self.history:
                if logged.samples is None:
                    continue
                for key, values in logged.sample_series().items():
                    steps, values_list = series.setdefault(key, ([], []))
                    steps.append(logged.step)
                    values_list.append(values.float().numpy())
        findings = self.findings() if findings is None else findings
        review = {"step": step, "series": series, "bins": self.bins,
                  "history": [(h.step, h.metrics) for h in self.history], "epochs": self.epochs,
                  "skips": self.skips, "findings": [f.to_dict() for f in findings],
                  "model": self.model.to_dict(), "meta": self.meta}
        self.sink.review(review)
