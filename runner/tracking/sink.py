"""Delivery to MLflow off the training thread: a bounded queue and one writer thread.

The training thread only enqueues plain Python values. The writer drains whatever is waiting and
writes it with ``log_batch`` (up to 1000 metrics a call), which the sqlite store ingests many
times faster than one call per metric. Images and artifacts are rendered and written on the same
thread. ``close()`` delivers everything queued before it returns, and reports what happened: how
much was queued and delivered, the largest backlog, and how long (if ever) training had to wait
because the queue was full.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

BATCH = 1000
_STOP = object()


@dataclass
class SinkReport:
    queued: int = 0         # metric values handed to the sink
    delivered: int = 0      # metric values the store accepted
    max_backlog: int = 0    # most items waiting in the queue at once
    waited_s: float = 0.0   # time the training thread spent blocked on a full queue
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.queued - self.delivered


class MlflowSink:
    def __init__(self, client: Any, run_id: str, queue_size: int = 10_000):
        self.client = client
        self.run_id = run_id
        self.report = SinkReport()
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    # training thread ----------------------------------------------------------------------------
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric values for ``step``; returns at once unless the queue is full."""
        self.report.queued += len(metrics)
        self._put(("metrics", step, int(time.time() * 1000), metrics))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the writer thread, in order with the metrics (renders, artifacts)."""
        self._put(("call", fn))

    def image(self, key: str, make: Callable[[], Any], step: int) -> None:
        """Render an image on the writer thread and log it under ``key`` at ``step``."""
        self.call(lambda: self.client.log_image(self.run_id, make(), key=key, step=step, synchronous=True))

    def _put(self, item: Any) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            t0 = time.perf_counter()
            self._q.put(item)
            self.report.waited_s += time.perf_counter() - t0
        self.report.max_backlog = max(self.report.max_backlog, self._q.qsize())

    def close(self, timeout: float | None = None) -> SinkReport:
        """Deliver everything queued, stop the writer and return the report."""
        self._q.put(_STOP)
        self._thread.join(timeout)
        return self.report

    # writer thread ------------------------------------------------------------------------------
    def _work(self) -> None:
        from mlflow.entities import Metric

        stop = False
        while not stop:
            items = [self._q.get()]
            while True:  # take everything already waiting
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            metrics: list[Metric] = []
            for item in items:
                if item is _STOP:
                    stop = True
                    continue
                if item[0] == "metrics":
                    _, step, ts, values = item
                    metrics.extend(Metric(k, float(v), ts, step) for k, v in values.items())
                else:
                    self._flush(metrics)
                    metrics = []
                    self._guard(item[1])
            self._flush(metrics)

    def _flush(self, metrics: list) -> None:
        for i in range(0, len(metrics), BATCH):
            chunk = metrics[i:i + BATCH]
            if self._guard(lambda: self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)):
                self.report.delivered += len(chunk)

    def _guard(self, fn: Callable[[], Any], tries: int = 3) -> bool:
        for attempt in range(tries):
            try:
                fn()
                return True
            except Exception as e:  # the store may be busy or away; retry, then report
                if attempt == tries - 1:
                    self.report.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    return False
                time.sleep(0.2 * (attempt + 1))
        return False
