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

from runner.errors import first_line
from runner.tracking.spool import BATCH, append, is_outage, send_metrics

# the longest a value waits in the writer before it is written: the store updates each key's latest
# value once per call, so a batch holding several logging steps costs ~10 % less CPU per value
FLUSH_SECONDS = 5.0
FEED_SECONDS = 0.25   # how often the training process forwards what was queued to the writer
STOP = "stop"
FLUSH = "flush"


@dataclass
class SinkReport:
    queued: int = 0         # metric values handed to the sink
    delivered: int = 0      # metric values the store accepted
    max_backlog: int = 0    # most items waiting in the queue at once
    waited_s: float = 0.0   # time the training loop spent blocked on a full queue
    images: int = 0         # images logged
    finished_at: float = 0.0  # wall-clock time (time.time()) when the writer had written everything
    outages: int = 0        # times the store became unreachable (batches were spooled meanwhile)
    left: int = 0           # metric values still in the spool (the store stayed away)
    deferred: int = 0       # uploads kept in the spool for later
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Values neither delivered nor kept in the spool for later."""
        return max(self.queued - self.delivered - self.left, 0)


class MlflowSink:
    """The training side of the writer: cheap, non-blocking (unless the queue is full) calls.

    The writer is a child process forked from this one (so it starts with MLflow already
    imported: no second start-up), fed pickled items over a pipe by a feeder thread; it works the
    same under any launcher (Hydra's joblib/loky workers, submitit, torchrun) and never runs the
    caller's ``__main__``. Where ``fork`` is missing it is a fresh ``python -m
    runner.tracking.sink`` instead.
    """

    def __init__(self, uri: str, run_id: str, queue_size: int = 10_000, skip_upto: dict[str, int] | None = None,
                 spool_file: str | None = None, drain_seconds: float = 120):
        self.report = SinkReport()
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._proc = start_writer(uri, run_id, spool_file, drain_seconds)
        self._closed = False
        self._ready = False
        self._dead = False
        # a resumed run: values the store already holds (steps up to these) are not sent again
        self._skip_upto = skip_upto or {}
        self._wake = threading.Event()  # set at close or on a full queue: forward at once
        self._feeder = threading.Thread(target=self._feed, name="mlflow-feeder", daemon=True)
        self._feeder.start()

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
        """Forward what the loop queued, a few times a second, as one pickled list: waking for
        every item would hand the GIL back and forth with the training thread at each step."""
        while True:
            items = [self._q.get()]
            if items[0] != STOP and items[0][0] != FLUSH:
                self._wake.wait(FEED_SECONDS)
                if not self._closed:
                    self._wake.clear()
            while items[-1] != STOP:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            flushes = [item[1] for item in items if item != STOP and item[0] == FLUSH]
            try:  # a flush reaches the writer as a plain marker: it writes what it holds at once
                pickle.dump([(FLUSH,) if item != STOP and item[0] == FLUSH else item for item in items],
                            self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return  # the writer is gone; _put notices and stops waiting for it
            for done in flushes:
                done.set()
            if items[-1] == STOP:
                return

    def flush(self, timeout: float = 60) -> None:
        """Hand everything queued so far to the writer process, which outlives this one and
        writes it at once (not after ``FLUSH_SECONDS``): what was logged before a checkpoint then
        reaches the store even if training is killed."""
        if self._closed or self._dead:
            return
        done = threading.Event()
        self._put((FLUSH, done))
        self._wake.set()
        deadline = time.monotonic() + timeout
        while not done.wait(0.2):
            if not self._feeder.is_alive() or time.monotonic() > deadline:
                return

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue metric values for ``step``; returns at once unless the queue is full."""
        if self._skip_upto:
            metrics = {k: v for k, v in metrics.items() if step > self._skip_upto.get(k, -1)}
            if not metrics:
                return
        self.report.queued += len(metrics)
        self._put(("metrics", step, int(time.time() * 1000), metrics))

    def review(self, review: dict) -> None:
        """Draw the heat maps (artifacts ``heatmaps/<kind>/<tensor>.png``, replaced at each
        render: the newest covers the run so far) and the HTML report in the writer."""
        self._put(("review", review))

    def replay(self, spools: list[str]) -> None:
        """Have the writer deliver what earlier parts of the run left in these spool files."""
        if spools:
            self._put(("replay", spools))

    def artifacts(self, files: list[str], dirs: dict[str, str] | None = None) -> None:
        """Upload files to the run root and directories under the given artifact paths."""
        self._put(("artifacts", files, dirs or {}))

    def _put(self, item: Any) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            t0 = time.perf_counter()
            self._wake.set()  # the feeder forwards now rather than at its next tick
            while True:  # wait for room, unless the writer is gone: then training must go on
                if not self._feeder.is_alive():
                    if not self._dead:
                        self._dead = True
                        self.report.errors.append("the writer process stopped; later values were not delivered")
                    return
                try:
                    self._q.put(item, timeout=1.0)
                    break
                except queue.Full:
                    continue
            self.report.waited_s += time.perf_counter() - t0
        self.report.max_backlog = max(self.report.max_backlog, self._q.qsize())

    def close(self, timeout: float = 600) -> SinkReport:
        """Deliver everything queued, stop the writer and return the report."""
        if self._closed:
            return self.report
        self._closed = True
        self.wait_ready(timeout)
        self._put(STOP)
        self._wake.set()
        self._feeder.join(timeout)
        line = self._readline(timeout)
        try:
            done = json.loads(line)
            self.report.delivered = done["delivered"]
            self.report.images = done["images"]
            self.report.finished_at = done["finished_at"]
            self.report.outages = done.get("outages", 0)
            self.report.left = done.get("left", 0)
            self.report.deferred = done.get("deferred", 0)
            self.report.notes = done.get("notes", [])
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
    """Writes batches; while the store is unreachable, keeps them in a spool and retries.

    A batch that fails because the store is away is appended to the spool file and kept in
    memory; later batches queue behind it, and the spool is retried every ``RETRY_SECONDS`` and at
    the end for up to ``drain_seconds``. What is still undelivered then stays in the spool file,
    and is reported. A metric key the store refuses is reported once and dropped, never blocking
    the rest; an upload the store cannot take now is deferred to the spool too.
    """

    def __init__(self, client: Any, run_id: str, spool_file: str | None = None, drain_seconds: float = 120):
        self.client = client
        self.run_id = run_id
        self.delivered = 0
        self.images = 0
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.refused: dict[str, str] = {}
        self.spool: list[list] = []
        self.spool_file = spool_file
        self.drain_seconds = drain_seconds
        self.outages = 0
        self.pending: set[tuple] = set()  # uploads kept in the spool for later (and not done since)
        self.last_error = ""

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
            if item[0] == "review":
                self.review(item[1])
            elif item[0] == "artifacts":
                self.upload(*item[1:])
            elif item[0] == "replay":
                self.replay(item[1])
        self.flush(metrics)

    def flush(self, metrics: list) -> None:
        if self.spool:
            self.retry_spool()
        for i in range(0, len(metrics), BATCH):
            chunk = metrics[i:i + BATCH]
            if self.spool or not self.send(chunk):
                self.to_spool(chunk)

    def _refused(self, key: str, why: str) -> None:
        if key not in self.refused:
            self.refused[key] = why
            self.errors.append(f"the store refuses the metric key {key!r}; its values are dropped ({why})")

    def send(self, chunk: list) -> bool:
        """Deliver a batch (keys the store refuses are dropped); False when the store is away."""
        try:
            sent = send_metrics(self.client, self.run_id, chunk, self._refused)
        except Exception as e:  # unreachable or busy store: the caller spools the batch
            self.last_error = f"{type(e).__name__}: {first_line(e)}"
            return False
        self.delivered += sent
        return True

    def to_spool(self, chunk: list) -> None:
        if not self.spool:
            self.outages += 1
        self.spool.append(chunk)
        if self.spool_file:
            append(self.spool_file, {"run_id": self.run_id,
                                     "metrics": [[m.key, m.value, m.timestamp, m.step] for m in chunk]})

    def retry_spool(self) -> None:
        while self.spool and self.send(self.spool[0]):
            self.spool.pop(0)

    def drain(self) -> None:
        """At the end: keep retrying the spool for up to ``drain_seconds``."""
        deadline = time.monotonic() + self.drain_seconds
        while self.spool and time.monotonic() < deadline:
            self.retry_spool()
            if self.spool:
                time.sleep(1.0)
        if self.spool:
            left = sum(len(c) for c in self.spool)
            self.errors.append(f"{left} metric values could not be delivered yet ({self.last_error}); they are kept "
                               f"in {self.spool_file}")
        elif self.outages and self.spool_file and not self.pending:
            append(self.spool_file, {"run_id": self.run_id, "delivered": True})

    def review(self, review: dict) -> None:
        """Heat maps as artifacts (not step images: no card per tensor among the run's charts),
        then the report: ``report.html`` in the run directory and among the artifacts."""
        import tempfile
        from pathlib import Path

        from runner.tracking.report import build, heatmap_png

        meta = review.get("meta") or {}
        with tempfile.TemporaryDirectory(prefix="runner-review-") as tmp:
            folder = Path(meta.get("run_dir") or tmp)
            maps = {}
            for key, (steps, series) in review["series"].items():
                maps[key] = heatmap_png(f"{key}  (step {review['step']})", steps, series, review["bins"])
                path = folder / "heatmaps" / f"{key}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(maps[key])
            if maps and self.guard(lambda: self.client.log_artifacts(self.run_id, str(folder / "heatmaps"),
                                                                     "heatmaps"), [str(folder / "heatmaps"), "heatmaps"]):
                self.images += len(maps)
            if not meta.get("report", True) or not meta:
                return
            target = folder / "report.html"
            staging = target.with_name(f".report.html.tmp-{os.getpid()}")
            staging.write_text(build(review, maps), encoding="utf-8")
            os.replace(staging, target)
            self.guard(lambda: self.client.log_artifact(self.run_id, str(target)), [str(target), None])

    def upload(self, files: list[str], dirs: dict[str, str]) -> None:
        for f in files:
            self.guard(lambda f=f: self.client.log_artifact(self.run_id, f), [f, None])
        for path, name in dirs.items():
            self.guard(lambda p=path, n=name: self.client.log_artifacts(self.run_id, p, artifact_path=n), [path, name])

    def replay(self, paths: list[str]) -> None:
        """Deliver what an earlier, killed part of this run left in its spool files."""
        from pathlib import Path

        from runner.tracking.spool import replay

        for p in paths:
            try:
                sent, _ = replay(Path(p), self.client, self.notes.append, statuses=False)
                if sent:
                    self.notes.append(f"delivered {sent} value(s) an earlier part of this run left in {p}")
            except Exception as e:
                self.errors.append(f"could not deliver what {p} holds yet: {first_line(e)}")

    def guard(self, fn, deferred: list | None = None, tries: int = 3) -> bool:
        """``fn()`` with retries; when the store stays away, the upload is deferred to the spool."""
        for attempt in range(tries):
            try:
                fn()
                if deferred is not None:  # a later upload of the same files supersedes a deferred one
                    self.pending.discard(tuple(deferred))
                return True
            except Exception as e:  # the store may be busy or away: retry, then defer or report
                if attempt == tries - 1:
                    if deferred is not None and self.spool_file and is_outage(e):
                        append(self.spool_file, {"run_id": self.run_id, "artifacts": [deferred]})
                        self.pending.add(tuple(deferred))
                    else:
                        self.errors.append(f"{type(e).__name__}: {first_line(e)}")
                    return False
                time.sleep(0.2 * (attempt + 1) if not is_outage(e) else 1.0)
        return False


RETRY_SECONDS = 2.0


class ForkedWriter:
    """The writer as a forked child: ``stdin``/``stdout`` pipes, ``wait``, ``kill`` (as Popen)."""

    def __init__(self, uri: str, run_id: str, spool_file: str | None, drain_seconds: float):
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        # a SIGINT/SIGTERM handler run inside os.fork's at-fork callbacks would have its exception
        # dropped (and the signal with it): hold the signals until the fork is done
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self.pid = os.fork()
            if self.pid == 0:  # the child: deliver, then leave without the parent's exit handlers
                code = 1
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the writer outlives Ctrl-C and SIGTERM
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                    os.close(down_w)
                    os.close(up_r)
                    _after_fork_in_child()
                    _writer_main(uri, run_id, spool_file, drain_seconds, os.fdopen(down_r, "rb"),
                                 os.fdopen(up_w, "w"))
                    code = 0
                finally:
                    os._exit(code)
            os.close(down_r)
            os.close(up_w)
            self.stdin = os.fdopen(down_w, "wb")
            self.stdout = os.fdopen(up_r, "rb")
            self.returncode: int | None = None
        finally:  # a signal that came meanwhile is handled now, in the parent's own code
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("writer", timeout)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _after_fork_in_child() -> None:
    """The child must not use the parent's database connections: make MLflow's cached engines
    open their own (SQLAlchemy's rule for forked processes)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for engine in list(SqlAlchemyStore._engine_map.values()):
            engine.dispose(close=False)
    except Exception:  # MLflow not imported yet, or another store kind: nothing inherited
        pass


def start_writer(uri: str, run_id: str, spool_file: str | None, drain_seconds: float):
    if hasattr(os, "fork"):
        return ForkedWriter(uri, run_id, spool_file, drain_seconds)
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING")}
    return subprocess.Popen([sys.executable, "-m", "runner.tracking.sink", uri, run_id, spool_file or "",
                             str(drain_seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def _writer_main(uri: str, run_id: str, spool_file: str | None = None, drain_seconds: float = 120,
                 inp=None, out=None) -> None:
    """The writer process: read pickled items from ``inp`` (stdin), write them in large batches;
    report on ``out`` (stdout)."""
    inp = inp or sys.stdin.buffer
    out = out or sys.stdout
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
        stdin = inp
        while True:
            try:
                items = pickle.load(stdin)
            except (EOFError, OSError, pickle.UnpicklingError):
                inbox.put(STOP)
                return
            for item in items:
                inbox.put(item)
            if items and items[-1] == STOP:
                return

    threading.Thread(target=read, daemon=True).start()
    client = MlflowClient(uri)
    client.get_run(run_id)  # open the store now
    writer = _Writer(client, run_id, spool_file, drain_seconds)
    print("ready", file=out, flush=True)
    pending: list = []
    waiting = 0          # metric values in ``pending``
    since = 0.0          # when the oldest pending item arrived
    while True:
        timeout = None if not pending else max(0.0, since + FLUSH_SECONDS - time.monotonic())
        if writer.spool:
            timeout = RETRY_SECONDS if timeout is None else min(timeout, RETRY_SECONDS)
        try:
            item = inbox.get(timeout=timeout)
        except queue.Empty:
            item = None
            writer.retry_spool()
        if item == STOP:
            writer.handle(pending)
            writer.drain()
            break
        flush = item is not None and item[0] == FLUSH  # a checkpoint: write what is held now
        if item is not None and not flush:
            if not pending:
                since = time.monotonic()
            pending.append(item)
            waiting += len(item[3]) if item[0] == "metrics" else 0
        # write in large batches: fewer, bigger store calls cost far less per value
        if pending and (flush or waiting >= BATCH or time.monotonic() - since >= FLUSH_SECONDS):
            writer.handle(pending)
            pending, waiting = [], 0
    print(json.dumps({"delivered": writer.delivered, "images": writer.images, "errors": writer.errors,
                      "outages": writer.outages, "finished_at": time.time(), "left": sum(len(c) for c in writer.spool),
                      "deferred": len(writer.pending), "notes": writer.notes}), file=out, flush=True)


if __name__ == "__main__":
    _writer_main(sys.argv[1], sys.argv[2], sys.argv[3] or None, float(sys.argv[4]))
