"""The spool: what a run could not deliver to its store, kept in ``<run dir>/mlflow_spool.jsonl``,
and the command that delivers it once the store is back.

One JSON line per record, each with its ``run_id`` and one of:
``metrics`` (``[[key, value, timestamp, step], ...]``), ``artifacts`` (``[[file, artifact
folder or null], ...]``, files of the run directory), ``tags``, ``register`` (the registry
version a run could not create) and ``status`` (its final status); ``delivered`` marks a spool
whose values all arrived. The writer spools metric batches while the store is unreachable; the
run defers what is left at its end (artifacts, tags, the registry version, the final status), so
that training's outcome, not the store's, decides how a run ends.

    python -m runner.tracking.spool outputs/<date>/<time>/mlflow_spool.jsonl [--tracking-uri URI]

Values the run already holds (same key and step) are skipped, artifacts are uploaded again, a
version is not registered twice for the same run and step: replaying twice is safe. The tracking
URI defaults to the one in the run directory's ``.hydra/config.yaml`` (credentials come from
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``).

A metric key the store refuses is reported once and dropped; the others are delivered.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from runner.errors import first_line

SPOOL = "mlflow_spool.jsonl"
BATCH = 1000  # metrics per log_batch call (MLflow's limit)
_OUTAGE = ("connection refused", "max retries exceeded", "failed to establish", "timed out", "timeout",
           "name or service not known", "connection aborted", "connection reset", "remote end closed",
           "temporary failure in name resolution", "unable to open database file", "bad gateway",
           "service unavailable", "gateway timeout", "error code 502", "error code 503", "error code 504")


class SpoolError(Exception):
    """A spool file that is not one."""


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_outage(e: BaseException) -> bool:
    """Whether a failed store call means the store is unreachable (retry later) rather than a
    refusal of what was sent."""
    for x in _chain(e):
        if isinstance(x, (ConnectionError, TimeoutError)):
            return True
        name = type(x).__name__
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "NewConnectionError", "MaxRetryError"):
            return True
        text = str(x).lower()
        if any(p in text for p in _OUTAGE):
            return True
    return False


def is_busy(e: BaseException) -> bool:
    """A sqlite store busy with another process's transaction: worth a retry."""
    return any("database is locked" in str(x).lower() for x in _chain(e))


def retry_busy(fn: Callable, attempts: int = 20, wait: float = 0.5):
    """``fn()``, retried while a sqlite store answers ``database is locked``."""
    import time

    for attempt in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not is_busy(e) or attempt == attempts - 1:
                raise
            time.sleep(wait * (1 + attempt % 4))


@lru_cache(maxsize=None)
def refusal(key: str) -> str | None:
    """Why the store would refuse metric key ``key`` (MLflow's own check), or None."""
    from mlflow.utils.validation import _validate_metric_name

    from runner.tracking.limits import _refused

    return _refused(_validate_metric_name, key)


def send_metrics(client: Any, run_id: str, metrics: list, refused: Callable[[str, str], None]) -> int:
    """Log ``metrics`` (``mlflow.entities.Metric``); a key the store refuses is dropped (and
    ``refused(key, why)`` told), the rest delivered: a rejected batch is split until the keys it
    refuses are found. Returns how many values were delivered; an outage raises."""
    good = []
    for m in metrics:
        why = refusal(m.key)
        if why is None:
            good.append(m)
        else:
            refused(m.key, why)
    sent = 0
    for i in range(0, len(good), BATCH):
        sent += _send(client, run_id, good[i:i + BATCH], refused)
    return sent


def _send(client, run_id, chunk, refused) -> int:
    if not chunk:
        return 0
    try:
        retry_busy(lambda: client.log_batch(run_id, metrics=chunk, synchronous=True), attempts=5)
        return len(chunk)
    except Exception as e:
        if is_outage(e) or is_busy(e):
            raise
        if len(chunk) == 1:
            refused(chunk[0].key, first_line(e))
            return 0
        half = len(chunk) // 2
        return _send(client, run_id, chunk[:half], refused) + _send(client, run_id, chunk[half:], refused)


def append(path: Path | str, record: dict) -> None:
    """Add one record to a spool file (one write: records of two processes never interleave)."""
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_spool(path: Path) -> tuple[dict[str, list[tuple[str, float, int, int]]], list[dict]]:
    """(run id -> the spooled (key, value, timestamp, step) values, in order, without repeats;
    the other records, in order)."""
    runs: dict[str, dict[tuple[str, int], tuple[str, float, int, int]]] = {}
    actions: list[dict] = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            run_id = record["run_id"]
            values = runs.setdefault(run_id, {})
            for key, value, ts, step in record.get("metrics", []):
                values.setdefault((key, int(step)), (key, float(value), int(ts), int(step)))
            if any(k in record for k in ("artifacts", "tags", "register", "status")):
                actions.append(record)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            if n == len(lines):
                continue  # the last line, cut short by a kill while it was written
            raise SpoolError(f"{path}:{n}: not a spool record") from None
    return {run: list(values.values()) for run, values in runs.items()}, actions


def replay(path: Path, client, say: Callable[[str], None] = lambda text: None,
           statuses: bool = True) -> tuple[int, int]:
    """Deliver everything a spool holds that the store does not. Returns (metric values sent,
    already there). ``statuses=False`` leaves out deferred final statuses: a resumed run replays
    its killed predecessor's spool while it trains, and its own end decides its status."""
    from mlflow.entities import Metric, RunTag

    values, actions = read_spool(path)
    sent = present = 0
    refused: dict[str, str] = {}
    for run_id, items in values.items():
        held: dict[str, set[int]] = {}
        for key in sorted({k for k, *_ in items}):
            held[key] = {m.step for m in client.get_metric_history(run_id, key)} if refusal(key) is None else set()
        todo = [Metric(k, v, ts, step) for k, v, ts, step in items if step not in held[k]]
        present += len(items) - len(todo)
        sent += send_metrics(client, run_id, todo, lambda k, why: refused.setdefault(k, why))
    for key, why in refused.items():
        say(f"dropped metric {key!r}: the store refuses it ({why})")
    for record in actions:
        run_id = record["run_id"]
        if "artifacts" in record:
            for file, folder in record["artifacts"]:
                if Path(file).is_dir():
                    client.log_artifacts(run_id, file, folder)
                elif Path(file).is_file():
                    client.log_artifact(run_id, file, folder)
            say(f"uploaded {len(record['artifacts'])} deferred artifact(s) of run {run_id}")
        if "tags" in record:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()], synchronous=True)
        if "register" in record:
            from runner.checkpoint.registry import publish_deferred

            say(f"registered {publish_deferred(client, run_id, record['register'])}")
        if "status" in record and statuses:
            client.set_terminated(run_id, record["status"])
            say(f"run {run_id} ended {record['status']}")
    return sent, present


def _uri_from_run_dir(path: Path) -> str | None:
    config = path.parent / ".hydra" / "config.yaml"
    if not config.exists():
        return None
    from omegaconf import OmegaConf

    uri = OmegaConf.select(OmegaConf.load(config), "tracking.uri", default=None)
    return None if uri is None or ":***@" in uri else uri  # a redacted URI: give --tracking-uri


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.tracking.spool",
                                 description="Deliver what a run left in its spool file.")
    ap.add_argument("spool", type=Path, help=f"<run dir>/{SPOOL}")
    ap.add_argument("--tracking-uri", help="the store to write to (default: the run's tracking.uri)")
    args = ap.parse_args(argv)
    if not args.spool.is_file():
        print(f"error: {args.spool}: no such spool file", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from runner.tracking.config import client, default_uri, redact

    uri = args.tracking_uri or _uri_from_run_dir(args.spool) or default_uri()
    try:
        sent, present = replay(args.spool, client(uri), print)
    except SpoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the store is still away, or refuses the run
        print(f"error: could not deliver to {redact(uri)}: {type(e).__name__}: {redact(first_line(e))}", file=sys.stderr)
        return 1
    print(f"{sent} values delivered to {redact(uri)}; {present} were already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
