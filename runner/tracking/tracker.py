"""The tracker the training loop talks to: statistics on logging steps, metrics at epoch ends,
histogram heat maps; everything handed to a sink that delivers it off the training thread."""
from __future__ import annotations

from typing import Any

import torch

from runner.tracking.stats import StatsCollector


class Tracker:
    def __init__(self, collector: StatsCollector, sink: Any, hist_cfg: dict | None = None):
        self.collector = collector
        self.sink = sink
        hist_cfg = hist_cfg or {}
        self.hist_on = bool(hist_cfg.get("enabled", True)) and collector.sample_size > 0
        self.bins = int(hist_cfg.get("bins", 40))
        self.every_n_epochs = int(hist_cfg.get("every_n_epochs", 0) or 0)
        self.history: dict[str, tuple[list[int], list[list[float]]]] = {}

    # called by the loop ---------------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        self.collector.to(device)

    def due(self, step: int) -> bool:
        return self.collector.due(step)

    def activations(self, on: bool) -> None:
        self.collector.activations(on)

    def before_step(self, grad_norm: float) -> None:
        self.collector.before_step(grad_norm)

    def after_step(self, step: int, loss: float, lrs: list[float]) -> None:
        logged = self.collector.after_step(step, loss, lrs)
        self.sink.log(logged.metrics, step)
        for key, values in logged.samples.items():
            steps, series = self.history.setdefault(key, ([], []))
            steps.append(step)
            series.append(values)

    def skipped(self, step: int, count: int) -> None:
        self.sink.log({"train/nonfinite_steps": float(count)}, step)

    def epoch_end(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.sink.log({**metrics, "train/epoch": float(epoch)}, step)
        if self.hist_on and self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.render(step)

    def finish(self, step: int) -> None:
        """Render the final heat maps (off the training thread) and stop collecting."""
        if self.hist_on and self.history:
            self.render(step)
        self.collector.close()

    def render(self, step: int) -> None:
        """Send each tensor's sample history to the writer, which draws and logs the heat map."""
        for key, (steps, series) in self.history.items():
            kind, name = key.split("/", 1)
            self.sink.heatmap(f"hist_{kind}/{name}", key, list(steps), list(series), self.bins, step)
