"""A progress bar (rich) on a terminal, one line per epoch otherwise, or nothing (quiet)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, mode: str, total: int):
        self.mode = mode if mode != "auto" else ("bar" if sys.stdout.isatty() else "lines")
        self.total = total
        self._bar = None
        self._start = time.perf_counter()

    def __enter__(self):
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, info="")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False

    def advance(self, step: int, loss: float) -> None:
        if self._bar is None:
            return
        if step % 10 == 0 or step == self.total:
            rate = step / max(time.perf_counter() - self._start, 1e-9)
            self._bar.update(self._task, completed=step, info=f"loss {loss:.4g}  {rate:.0f} steps/s")

    def epoch_end(self, epoch: int, step: int, metrics: dict) -> None:
        if self.mode == "quiet":
            return
        text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if self._bar is not None:
            self._bar.console.print(f"epoch {epoch}  step {step}  {text}")
        else:
            print(f"epoch {epoch}  step {step}  {text}", flush=True)
