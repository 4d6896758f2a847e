"""The tracker the training loop talks to: statistics on logging steps, metrics at epoch ends,
histogram heat maps; everything handed to a sink that delivers it off the training thread.

For the heat maps it keeps each logging step's histogram samples (bfloat16, as one tensor per
step) for at most ``2 * MAX_COLUMNS`` steps: past that it drops every other column and keeps
every second step from then on, so a long run costs bounded memory and the map still spans it.
The history travels in checkpoints, so a resumed run's maps cover the whole run.
"""
from __future__ import annotations

from typing import Any

import torch

from runner.tracking.stats import LoggedStep, StatsCollector

MAX_COLUMNS = 64


class Tracker:
    def __init__(self, collector: StatsCollector, sink: Any, hist_cfg: Any = None):
        from runner.tracking.config import Histograms

        hist_cfg = Histograms.of(hist_cfg, "tracking.histograms")
        self.collector = collector
        self.sink = sink
        self.hist_on = collector.sample_size > 0  # 0 when tracking.histograms.enabled is false
        self.bins = hist_cfg.bins
        self.every_n_epochs = hist_cfg.every_n_epochs
        self.history: list[LoggedStep] = []   # metrics dropped, samples in bfloat16
        self._stride = 1                       # keep samples of every n-th logging step
        self._logged = 0

    # called by the loop ---------------------------------------------------------------------
    def start(self, device: torch.device) -> None:
        self.collector.to(device)

    def due(self, step: int) -> bool:
        return self.collector.due(step)

    def activations(self, on: bool) -> None:
        self.collector.activations(on)

    def before_step(self, grad_norm=None) -> None:
        self.collector.before_step(grad_norm)

    def after_step(self, step: int, loss, lrs: list[float]) -> None:
        logged = self.collector.after_step(step, loss, lrs)
        self.sink.log(logged.metrics, step)
        if self.hist_on and logged.samples is not None:
            self._logged += 1
            if self._logged % self._stride == 0:
                self.history.append(LoggedStep(step, {}, logged.samples.to(torch.bfloat16), logged.layout))
                if len(self.history) >= 2 * MAX_COLUMNS:
                    self.history = self.history[1::2]
                    self._stride *= 2

    def state(self) -> dict:
        """The heat-map history, for a checkpoint's training state (tensors and plain values), so
        that a resumed run's heat maps still start at step 1."""
        return {"steps": [h.step for h in self.history], "samples": [h.samples for h in self.history],
                "layouts": [[[k, n] for k, n in h.layout] for h in self.history],
                "stride": self._stride, "logged": self._logged}

    def load_state(self, state: dict | None) -> None:
        if not state:
            return
        self.history = [LoggedStep(step, {}, samples, [(k, int(n)) for k, n in layout])
                        for step, samples, layout in zip(state["steps"], state["samples"], state["layouts"])]
        self._stride, self._logged = int(state["stride"]), int(state["logged"])

    def flush(self) -> None:
        """Before a checkpoint: everything logged so far goes to the writer process."""
        self.sink.flush()

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
        by_key: dict[str, tuple[list[int], list]] = {}
        for logged in self.history:
            for key, values in logged.sample_series().items():
                steps, series = by_key.setdefault(key, ([], []))
                steps.append(logged.step)
                series.append(values.float().numpy())
        for key, (steps, series) in by_key.items():
            self.sink.heatmap(key, f"{key}  (step {step})", steps, series, self.bins, step)
