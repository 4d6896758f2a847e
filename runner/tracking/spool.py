"""Deliver the metric values a tracking outage left in a run's spool file.

When the store stays unreachable past ``tracking.drain_timeout_s``, the run ends with the values
it could not write kept in ``<run dir>/mlflow_spool.jsonl`` (one JSON line per batch). Once the
store is back:

    python -m runner.tracking.spool outputs/<date>/<time>/mlflow_spool.jsonl [--tracking-uri URI]

Values the run already holds (same key and step) are skipped, so a spool whose batches were
partly delivered, or one replayed twice, still gives each value once. The tracking URI defaults
to the one in the run directory's ``.hydra/config.yaml``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runner.errors import first_line
from runner.tracking.sink import BATCH


class SpoolError(Exception):
    """A spool file that is not one."""


def read_spool(path: Path) -> dict[str, list[tuple[str, float, int, int]]]:
    """Run id -> the spooled (key, value, timestamp, step) values, in order, without repeats."""
    runs: dict[str, dict[tuple[str, int], tuple[str, float, int, int]]] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            values = runs.setdefault(record["run_id"], {})
            for key, value, ts, step in record.get("metrics", []):
                values.setdefault((key, int(step)), (key, float(value), int(ts), int(step)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if n == len(lines):
                continue  # the last line, cut short by a kill while it was written
            raise SpoolError(f"{path}:{n}: not a spool record") from None
    return {run: list(values.values()) for run, values in runs.items()}


def replay(path: Path, client) -> tuple[int, int]:
    """Log every spooled value the store does not hold yet. Returns (sent, already there)."""
    from mlflow.entities import Metric

    sent = present = 0
    for run_id, values in read_spool(path).items():
        held: dict[str, set[int]] = {}
        for key in sorted({k for k, *_ in values}):
            held[key] = {m.step for m in client.get_metric_history(run_id, key)}
        todo = [Metric(k, v, ts, step) for k, v, ts, step in values if step not in held[k]]
        present += len(values) - len(todo)
        for i in range(0, len(todo), BATCH):
            client.log_batch(run_id, metrics=todo[i:i + BATCH], synchronous=True)
            sent += len(todo[i:i + BATCH])
    return sent, present


def _uri_from_run_dir(path: Path) -> str | None:
    config = path.parent / ".hydra" / "config.yaml"
    if not config.exists():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.select(OmegaConf.load(config), "tracking.uri", default=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.tracking.spool",
                                 description="Deliver the metric values left in a run's spool file.")
    ap.add_argument("spool", type=Path, help="<run dir>/mlflow_spool.jsonl")
    ap.add_argument("--tracking-uri", help="the store to write to (default: the run's tracking.uri)")
    args = ap.parse_args(argv)
    if not args.spool.is_file():
        print(f"error: {args.spool}: no such spool file", file=sys.stderr)
        return 2
    from runner.tracking.config import client, default_uri

    uri = args.tracking_uri or _uri_from_run_dir(args.spool) or default_uri()
    try:
        sent, present = replay(args.spool, client(uri))
    except SpoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the store is still away, or refuses the run
        print(f"error: could not deliver to {uri}: {type(e).__name__}: {first_line(e)}", file=sys.stderr)
        return 1
    print(f"{sent} values delivered to {uri}; {present} were already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
