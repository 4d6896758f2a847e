"""GPU checks the CPU machines cannot make (``bench/gpu_check.sh`` runs this).

For each preset: train on the GPU in bf16 with ``torch.cuda.set_sync_debug_mode("error")``
switched on for every non-logging step (any host synchronisation there raises), then print
steps per second. Logging steps read back on purpose and run with the debug mode off.
"""
from __future__ import annotations

import sys
import time

import torch

import runner
from runner.tracking.stats import StatsCollector
from runner.tracking.tracker import Tracker
from runner.train import step as step_module
from runner.train.loop import fit

PRESETS = {
    "digits_cnn": dict(groups={"experiment": "digits_cnn"}, overrides=["train.epochs=3"]),
    "char_gpt": dict(groups={"experiment": "char_gpt"}, overrides=["train.epochs=2", "data.steps_per_epoch=100"]),
    "mlp_wide": dict(groups={"model": "mlp_wide", "data": "digits"}, overrides=["train.epochs=3"]),
}


class Recorder:
    def __init__(self):
        self.metrics = {}

    def log(self, metrics, step):
        self.metrics.setdefault(step, {}).update(metrics)

    def review(self, review):
        pass

    def flush(self):
        pass


def strict_steps() -> None:
    """Non-logging steps run with sync debug mode "error"."""
    run = step_module.Stepper.run

    def checked(self, group, ledger, i, log=False, tracker=None, step=0):
        torch.cuda.set_sync_debug_mode("default" if log else "error")
        try:
            return run(self, group, ledger, i, log, tracker, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    step_module.Stepper.run = checked


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    strict_steps()
    failed = 0
    for name, spec in PRESETS.items():
        for precision in ("fp32", "bf16"):
            prepared = runner.prepare(runner.compose([*spec["overrides"], f"train.precision={precision}",
                                                      "train.device=cuda", "train.progress=quiet"], **spec["groups"]))
            sink = Recorder()
            tracker = Tracker(StatsCollector(prepared.net, prepared.config.tracking), sink, prepared.config.tracking)
            t0 = time.perf_counter()
            try:
                result = fit(prepared.net, prepared.data, prepared.config.train, tracker)
            except RuntimeError as e:
                print(f"{name:12} {precision}: FAILED: {str(e).splitlines()[0]}")
                failed += 1
                continue
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            print(f"{name:12} {precision}: {result.steps / seconds:8.1f} steps/s, {result.steps} steps, "
                  f"final {', '.join(f'{k} {v:.4g}' for k, v in result.final.items())}, "
                  f"{len(sink.metrics)} logging steps, {result.skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
