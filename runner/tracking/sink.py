"""Delivery to MLflow off the training process: a bounded queue and one writer process.

The training loop only enqueues plain Python values. A writer *process* (not a thread: the store
client is Python-heavy and would compete with training for the GIL) collects what arrives and
writes it with ``log_batch`` (up to 1000 metrics a call), which the sqlite store ingests many
times faster than one call per metric. Histogram heat maps are rendered and artifacts uploaded
there too. ``close()`` delivers everything queued before it returns and reports what happened:
values queued and delivered, the largest backlog, how long (if ever) training waited because
the queue was full, and any store errors. The writer ignores Ctrl-C and SIGTERM so that it can
finish delivering while the run is being ended; when the trainer dies its stdin closes, and it
delivers what it has and exits.
"""
from __future__ import annotations

import json
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

BATCH = 1000          # metrics per log_batch call (MLflow's limit)
FLUSH_SECONDS = 2.0   # the longest a value waits in the writer before it is written
STOP = "stop"


@dataclass
class SinkReport:
    queued: int = 0         # metric values handed to the sink
    delivered: int = 0      # metric values the store accepted
    max_backlog: int = 0    # most items waiting in the queue at once
    waited_s: float = 0.0   # time the training loop spent blocked on a full queue
    images: int = 0         # images logged
    finished_at: float = 0.0  # wall-clock time (time.time()) when the writer had written everything
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.queued - self.delivered


class MlflowSink:
    """The training side of the writer: cheap, non-blocking (unless the queue is full) calls.

    The writer is a plain subprocess (``python -m runner.tracking.sink``) fed pickled items over
    its stdin by a feeder thread, so it works the same under any launcher (Hydra's joblib/loky
    workers, submitit, torchrun) and never re-imports the caller's ``__main__``.
    """

    def __init__(self, uri: str, run_id: str, queue_size: int = 10_000, skip_upto: dict[str, int] | None = None):
        self.report = SinkReport()
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        env = {**os.environ, "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING")}
        self._proc = subprocess.Popen([sys.executable, "-m", "runner.tracking.sink", uri, run_id],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._feeder = threading.Thread(target=self._feed, name="mlflow-feeder", daemon=True)
        self._feeder.start()
        self._closed = False
        self._ready = False
        # a resumed run: values the store already holds (steps up to these) are not sent again
        self._skip_upto = skip_upto or {}

    def wait_ready(self, timeout: float = 120) -> None:
        """Block until the writer has started (imports done, store open), so that its start-up
        does not compete with the first training steps."""
        if not self._ready:
            line = self._readline(timeout)
            self._ready = line.strip() == "ready"
            if not self._ready:
                self.report.errors.append(f"the writer did not start: {line.strip() or 'no answer'}")

    def _readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        return self._proc.stdout.readline().decode() if ready else ""

    def _feed(self) -> None:
        while True:
            item = self._q.get()
            try:
                pickle.dump(item, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return
            if item == STOP:
                return

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric values for ``step``; returns at once unless the queue is full."""
        if self._skip_upto:
            metrics = {k: v for k, v in metrics.items() if step > self._skip_upto.get(k, -1)}
            if not metrics:
                return
        self.report.queued += len(metrics)
        self._put(("metrics", step, int(time.time() * 1000), metrics))

    def heatmap(self, key: str, title: str, steps: list[int], series: list[list[float]], bins: int, step: int) -> None:
        """Render a histogram heat map in the writer and log it as image ``key`` at ``step``."""
        self._put(("heatmap", key, title, steps, series, bins, step))

    def artifacts(self, files: list[str], dirs: dict[str, str] | None = None) -> None:
        """Upload files to the run root and directories under the given artifact paths."""
        self._put(("artifacts", files, dirs or {}))

    def _put(self, item: Any) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            t0 = time.perf_counter()
            self._q.put(item)
            self.report.waited_s += time.perf_counter() - t0
        self.report.max_backlog = max(self.report.max_backlog, self._q.qsize())

    def close(self, timeout: float = 600) -> SinkReport:
        """Deliver everything queued, stop the writer and return the report."""
        if self._closed:
            return self.report
        self._closed = True
        self.wait_ready(timeout)
        self._q.put(STOP)
        self._feeder.join(timeout)
        line = self._readline(timeout)
        try:
            done = json.loads(line)
            self.report.delivered = done["delivered"]
            self.report.images = done["images"]
            self.report.finished_at = done["finished_at"]
            self.report.errors.extend(done["errors"])
        except (json.JSONDecodeError, KeyError):
            self.report.errors.append(f"the writer did not finish within {timeout:.0f}s")
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
        return self.report


class _Writer:
    def __init__(self, client: Any, run_id: str):
        self.client = client
        self.run_id = run_id
        self.delivered = 0
        self.images = 0
        self.errors: list[str] = []

    def handle(self, items: list) -> None:
        from mlflow.entities import Metric

        metrics: list = []
        for item in items:
            if item[0] == "metrics":
                _, step, ts, values = item
                metrics.extend(Metric(k, float(v), ts, step) for k, v in values.items())
                continue
            self.flush(metrics)
            metrics = []
            if item[0] == "heatmap":
                self.heatmap(*item[1:])
            elif item[0] == "artifacts":
                self.upload(*item[1:])
        self.flush(metrics)

    def flush(self, metrics: list) -> None:
        for i in range(0, len(metrics), BATCH):
            chunk = metrics[i:i + BATCH]
            if self.guard(lambda: self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)):
                self.delivered += len(chunk)

    def heatmap(self, key, title, steps, series, bins, step) -> None:
        from runner.tracking.images import heatmap

        def log() -> None:
            self.client.log_image(self.run_id, heatmap(title, steps, series, bins), key=key, step=step,
                                  synchronous=True)
        if self.guard(log):
            self.images += 1

    def upload(self, files: list[str], dirs: dict[str, str]) -> None:
        for f in files:
            self.guard(lambda f=f: self.client.log_artifact(self.run_id, f))
        for path, name in dirs.items():
            self.guard(lambda p=path, n=name: self.client.log_artifacts(self.run_id, p, artifact_path=n))

    def guard(self, fn, tries: int = 3) -> bool:
        for attempt in range(tries):
            try:
                fn()
                return True
            except Exception as e:  # the store may be busy or away: retry, then report
                if attempt == tries - 1:
                    self.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    return False
                time.sleep(0.2 * (attempt + 1))
        return False


def _writer_main(uri: str, run_id: str) -> None:
    """The writer process: read pickled items from stdin, write them in large batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        # training has priority over delivery; the queue absorbs the difference (the writer stays
        # in the trainer's session: with autogroup scheduling, nice counts only within a session)
        os.nice(10)
    except OSError:
        pass
    from mlflow import MlflowClient

    inbox: queue.Queue = queue.Queue()

    def read() -> None:  # stdin closes when the trainer exits, whatever the way: stop then
        stdin = sys.stdin.buffer
        while True:
            try:
                item = pickle.load(stdin)
            except (EOFError, OSError, pickle.UnpicklingError):
                inbox.put(STOP)
                return
            inbox.put(item)
            if item == STOP:
                return

    threading.Thread(target=read, daemon=True).start()
    client = MlflowClient(uri)
    client.get_run(run_id)  # open the store now
    writer = _Writer(client, run_id)
    print("ready", flush=True)
    pending: list = []
    waiting = 0          # metric values in ``pending``
    since = 0.0          # when the oldest pending item arrived
    while True:
        timeout = None if not pending else max(0.0, since + FLUSH_SECONDS - time.monotonic())
        try:
            item = inbox.get(timeout=timeout)
        except queue.Empty:
            item = None
        if item == STOP:
            writer.handle(pending)
            break
        if item is not None:
            if not pending:
                since = time.monotonic()
            pending.append(item)
            waiting += len(item[3]) if item[0] == "metrics" else 0
        # write in large batches: fewer, bigger store calls cost far less per value
        if pending and (waiting >= BATCH or time.monotonic() - since >= FLUSH_SECONDS):
            writer.handle(pending)
            pending, waiting = [], 0
    print(json.dumps({"delivered": writer.delivered, "images": writer.images, "errors": writer.errors,
                      "finished_at": time.time()}), flush=True)


if __name__ == "__main__":
    _writer_main(sys.argv[1], sys.argv[2])
