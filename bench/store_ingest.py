"""Store ingest: metric values per second into a sqlite MLflow store, side by side.

- one ``log_metric`` call per value (what a naive logger does), and
- the runner's sink (queue -> writer process -> ``log_batch``), timed from the first value queued
  until every value is in the store; then the store is read back to count what arrived.

    python bench/store_ingest.py [--keys 50] [--steps 200]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fresh_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=50)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--naive-steps", type=int, default=10, help="steps for the slow one-call-per-value path")
    args = ap.parse_args()
    from runner.tracking.sink import MlflowSink

    uri, client = fresh_store()
    exp = client.create_experiment("ingest")
    keys = [f"weight_norm/layer{i}.weight" for i in range(args.keys)]

    naive_run = client.create_run(exp).info.run_id
    t0 = time.perf_counter()
    for step in range(args.naive_steps):
        for i, k in enumerate(keys):
            client.log_metric(naive_run, k, float(i * step), step=step)
    naive_s = time.perf_counter() - t0
    naive_n = args.naive_steps * len(keys)

    run = client.create_run(exp).info.run_id
    sink = MlflowSink(uri, run)
    sink.wait_ready()
    t0, wall0 = time.perf_counter(), time.time()
    for step in range(args.steps):
        sink.log({k: float(i * step) for i, k in enumerate(keys)}, step)
    queued_s = time.perf_counter() - t0
    report = sink.close()
    sink_s = report.finished_at - wall0  # until the writer had stored the last value
    stored = sum(len(client.get_metric_history(run, k)) for k in keys)

    naive_rate, sink_rate = naive_n / naive_s, report.delivered / sink_s
    print(f"{'path':34} {'values':>8} {'seconds':>8} {'values/s':>10}")
    print(f"{'one log_metric call per value':34} {naive_n:8d} {naive_s:8.2f} {naive_rate:10.0f}")
    print(f"{'runner sink (batched, off-process)':34} {report.delivered:8d} {sink_s:8.2f} {sink_rate:10.0f}")
    print(f"ratio: {sink_rate / naive_rate:.1f}x; the training side spent {queued_s * 1000:.1f} ms queueing "
          f"{report.queued} values")
    print(f"queued {report.queued}, delivered {report.delivered}, in the store {stored}, lost {report.queued - stored}")


if __name__ == "__main__":
    main()
