"""Sweeps (``runner -m ...``): one parent MLflow run per sweep, a child run per job, a closing table.

The launching process creates the store and the experiment once, before any job starts (parallel
jobs opening a fresh sqlite store at once would race its schema migration and the experiment's
creation), and opens the parent run; its id and the overrides all jobs share are written to
``<sweep dir>/sweep.json`` so jobs find them whatever the launcher (basic, joblib, submitit) and
process they run in. A job's run is named from the values the sweep chose for it
(``train.lr=0.1,init=...``), whether from the command line or from a sweeper such as Optuna. Each job ends by
writing ``job_status.json`` in its own directory; a failing job ends FAILED without stopping the
others, and the sweep ends with a table of jobs and their final metrics, best first, and exit
status 1 if any job failed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SWEEP_FILE = "sweep.json"
STATUS_FILE = "job_status.json"


def _tracking(config: DictConfig) -> dict | None:
    t = config.get("tracking")
    if config.get("task", "train") != "train" or t is None or not t.get("enabled", True):
        return None
    return t


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns an exception raised by a callback into a warning and launches the jobs
        # anyway; a sweep whose store cannot be opened must stop here, before any job
        from runner.errors import UserError

        try:
            self._start(config)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def _start(self, config: DictConfig) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        given = list(config.hydra.overrides.task)
        parsed = OverridesParser.create().parse_overrides(given)
        # overrides every job shares; what a job has beyond them is what the sweep(er) chose for it
        info = {"parent_run_id": None, "base": [text for text, o in zip(given, parsed) if not o.is_sweep_override()]}
        t = _tracking(config)
        if t is None:
            (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))
            return
        from runner.config import as_typed
        from runner.tracking.config import check_store, client as mlflow_client, default_uri, redact
        from runner.tracking.run import ensure_experiment, store_folder

        uri = t.get("uri") or default_uri()
        check_store(uri)  # a store that cannot be opened fails the sweep once, before any job
        artifact_root = store_folder(uri)
        overrides = redact(" ".join(as_typed(config.hydra.overrides.task))) or "(none)"
        try:
            client = mlflow_client(uri)
            exp_id = ensure_experiment(client, t.get("experiment") or "runner", artifact_root)
            parent = client.create_run(exp_id, run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
                                       tags={"runner.sweep": "parent", "runner.sweep_dir": str(sweep_dir.resolve()),
                                             "runner.overrides": overrides})
        except Exception as e:
            from runner.errors import UserError, first_line

            raise UserError(f"tracking.uri: cannot open the store at {redact(uri)}: {redact(first_line(e))}") from None
        info["parent_run_id"] = parent.info.run_id
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(info))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job = job_context()
        if job is not None:
            write_status(job, "STARTED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = []
        for p in sorted(sweep_dir.glob(f"*/{STATUS_FILE}")):
            try:
                job = json.loads(p.read_text())
            except ValueError:
                job = {"num": p.parent.name, "overrides": "?", "status": "FAILED", "metrics": {},
                       "error": "unreadable status file"}
            if job["status"] == "STARTED":  # it never wrote an end: killed
                job.update(status="FAILED", error="killed: the job ended without a status")
            jobs.append(job)
        jobs.sort(key=lambda j: int(j["num"]) if str(j["num"]).isdigit() else 0)
        metric = (config.get("checkpoint") or {}).get("best_metric") or "val/loss"
        mode = (config.get("checkpoint") or {}).get("best_mode") or "min"
        failed = [j for j in jobs if j["status"] != "FINISHED"]
        print_table(jobs, metric, mode)
        info = json.loads((sweep_dir / SWEEP_FILE).read_text()) if (sweep_dir / SWEEP_FILE).is_file() else {}
        parent_id = info.get("parent_run_id")
        t = _tracking(config)
        if t is not None and parent_id:
            from runner.tracking.config import client as mlflow_client

            client = mlflow_client(t.get("uri"))
            done = [j for j in jobs if j["status"] == "FINISHED" and metric in j["metrics"]]
            if done:
                best = (min if mode == "min" else max)(done, key=lambda j: j["metrics"][metric])
                client.log_metric(parent_id, f"best/{metric}", best["metrics"][metric], step=0)
                client.set_tag(parent_id, "runner.best_run", best.get("run_id") or "")
            log_comparison(client, parent_id, jobs, metric, mode, sweep_dir)
            client.set_tag(parent_id, "runner.jobs", f"{len(jobs) - len(failed)} finished, {len(failed)} failed")
            client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
        if failed:
            print(f"{len(failed)} of {len(jobs)} jobs failed", file=sys.stderr)
            sys.exit(1)


def log_comparison(client, parent_id: str, jobs: list[dict], metric: str, mode: str, sweep_dir: Path) -> None:
    """The children side by side on the parent run: each final metric as ``jobs/<metric>`` with
    the job number as its step (a chart across the sweep), and the table of jobs as artifacts
    ``sweep_summary.csv`` and ``sweep_summary.html``."""
    import csv
    import html

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = [Metric(f"jobs/{k}", float(v), now, int(j["num"])) for j in jobs if j["status"] == "FINISHED"
              for k, v in j["metrics"].items()]
    for i in range(0, len(values), 1000):
        client.log_batch(parent_id, metrics=values[i:i + 1000])
    names = sorted({k for j in jobs for k in j["metrics"]})
    ordered = sorted(jobs, key=_order(metric, mode))
    path = sweep_dir / "sweep_summary.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "overrides", "status", *names, "run_id", "error"])
        for j in ordered:
            w.writerow([j["num"], j["overrides"], j["status"], *(j["metrics"].get(k, "") for k in names),
                        j.get("run_id") or "", j.get("error", "")])
    rows = "".join(f"<tr><td>{j['num']}</td><td>{html.escape(j['overrides'])}</td><td>{j['status']}</td>"
                   + "".join(f"<td>{j['metrics'][k]:.4g}</td>" if k in j["metrics"] else "<td></td>" for k in names)
                   + f"<td>{html.escape(j.get('run_id') or j.get('error', ''))}</td></tr>" for j in ordered)
    page = sweep_dir / "sweep_summary.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><style>td,th{padding:3px 8px;"
                    "border-bottom:1px solid #eee;font:13px system-ui}</style></head><body>"
                    f"<h2>Sweep: {len(jobs)} jobs, best {html.escape(metric)} first</h2><table><tr><th>job</th>"
                    "<th>overrides</th><th>status</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in names)
                    + f"<th>run</th></tr>{rows}</table></body></html>")
    for f in (path, page):
        client.log_artifact(parent_id, str(f))


def _order(metric: str, mode: str):
    def key(j):
        v = j["metrics"].get(metric)
        ok = j["status"] == "FINISHED" and v is not None
        return (not ok, (v if mode == "min" else -v) if ok else 0.0, j["num"])
    return key


def print_table(jobs: list[dict], metric: str, mode: str) -> None:
    from rich.table import Table

    from runner.tables import make_console

    names = sorted({k for j in jobs for k in j["metrics"]})
    table = Table(title=f"Sweep: {len(jobs)} jobs, best {metric} first", title_justify="left")
    for col in ("#", "Overrides", "Status", *names, "Run"):
        table.add_column(col)
    for j in sorted(jobs, key=_order(metric, mode)):
        table.add_row(str(j["num"]), j["overrides"], j["status"],
                      *(f"{j['metrics'][k]:.4g}" if k in j["metrics"] else "" for k in names),
                      j.get("run_id") or j.get("error", "")[:60])
    make_console().print(table)


def job_context() -> dict | None:
    """In a multirun job: its number, overrides, run name, sweep directory and parent run id."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_file = Path(hc.sweep.dir) / SWEEP_FILE
    info = json.loads(sweep_file.read_text()) if sweep_file.is_file() else {}
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    from runner.config import as_typed

    overrides = as_typed(hc.overrides.task)

    def same(text: str) -> tuple:  # compare parsed values: sweepers re-render "false" as "False"
        o = parser.parse_override(text)
        return o.key_or_group, repr(o.value())

    base = {same(t) for t in info.get("base") or []}
    varying = [o for o in overrides if same(o) not in base]
    from runner.tracking.config import redact

    return {"num": int(hc.job.num), "overrides": redact(" ".join(varying or overrides)) or "(none)",
            "run_name": redact(",".join(varying))[:240] or f"job-{hc.job.num}",
            "parent_run_id": info.get("parent_run_id"), "output_dir": Path(hc.runtime.output_dir)}


def write_status(ctx: dict, status: str, metrics: dict | None = None, run_id: str | None = None,
                 error: str = "") -> None:
    """The job's status file, replaced atomically (temp file, fsync, rename): the sweep never reads
    half a file. STARTED is written when the job starts, so a job killed outright still shows."""
    import os

    ctx["output_dir"].mkdir(parents=True, exist_ok=True)
    target = ctx["output_dir"] / STATUS_FILE
    tmp = target.with_name(f".{STATUS_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps({"num": ctx["num"], "overrides": ctx["overrides"], "status": status,
                            "metrics": metrics or {}, "run_id": run_id, "error": error}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def job_finished(ctx: dict) -> bool:
    """Whether the job already wrote its final status."""
    path = ctx["output_dir"] / STATUS_FILE
    try:
        return json.loads(path.read_text())["status"] != "STARTED"
    except (OSError, ValueError, KeyError):
        return False
