"""One MLflow run around a training job, with a status that tells the truth.

FINISHED on success, FAILED on an exception (a non-finite abort included), KILLED on Ctrl-C or
SIGTERM (MLflow alone leaves a SIGTERM-ed run RUNNING forever). Params are the flattened resolved
config; tags carry the task, the Hydra overrides and group choices and the git commit; the run
directory's reports and ``.hydra/`` configs are logged as artifacts.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from runner.errors import Terminated, UserError, first_line
from runner.tracking.config import default_uri, redact
from runner.tracking.sink import MlflowSink, SinkReport
from runner.tracking.spool import SPOOL, is_busy, is_outage

PARAM_VALUE_MAX = 6000


def flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    """``{"model": {"layers": [{"type": "linear"}]}}`` -> ``{"model.layers.0.type": "linear"}``."""
    out: dict[str, str] = {}
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg) if isinstance(cfg, list) else None
    if items is None or (isinstance(cfg, (dict, list)) and not cfg):
        value = "" if cfg is None else str(cfg)
        out[prefix] = value if len(value) <= PARAM_VALUE_MAX else value[: PARAM_VALUE_MAX - 3] + "..."
        return out
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return {k: redact(v) for k, v in out.items()}


def git_commit(where: Path) -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def store_folder(uri: str) -> Path | None:
    """For a sqlite store: create its folder and return where its artifacts go."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return db.parent / "mlartifacts"


KIND_TAG = "mlflow.experimentKind"  # what the MLflow UI reads to open an experiment's training view


def ensure_experiment(client: Any, name: str, artifact_root: Path | None) -> str:
    """The id of experiment ``name``, creating it (race-safe) when missing. It is tagged as a model
    training experiment (``mlflow.experimentKind``) so the UI can open it on its runs view."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        location = artifact_root.resolve().as_uri() if artifact_root else None
        return client.create_experiment(name, artifact_location=location,
                                        tags={KIND_TAG: "custom_model_development"})
    except Exception:
        exp = client.get_experiment_by_name(name)  # another process made it first
        if exp is None:
            raise
        return exp.experiment_id


class TrackedRun:
    """Context manager: create the run, start the writer, end the run with its true status."""

    def __init__(self, config, run_dir: Path, tags: dict[str, str] | None = None,
                 resume_run_id: str | None = None, name: str | None = None):
        self.config = config  # runner.config.RunConfig
        self.tcfg = config.tracking
        self.run_dir = run_dir
        self.uri = self.tcfg.uri or default_uri()
        self.extra_tags = tags or {}
        self.status = "RUNNING"
        self.sink_report: SinkReport | None = None
        self._monitor = None
        self.resume_run_id = resume_run_id
        self.name = name
        self.deferred: list[str] = []  # what the store could not take and the spool keeps
        self.late: list[str] = []      # what was deferred, then delivered before the run ended
        self.registered_late: str | None = None

    def __enter__(self) -> "TrackedRun":
        import os

        from runner.tracking.config import check_store, client

        check_store(self.uri)
        if self.uri.startswith(("http://", "https://")):
            # a tracking server: fail fast instead of MLflow's minutes of retries; the writer
            # spools through outages (these settings reach it through the environment)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.tcfg.http_timeout_s)))
        try:
            self.client = client(self.uri)
            self._open()
        except (UserError, KeyboardInterrupt, Terminated):
            raise
        except Exception as e:
            raise UserError(f"tracking.uri: cannot open the store at {redact(self.uri)}: {first_line(e)[:300]}") from None
        try:  # from here on the run exists: whatever happens, it ends with a true status
            self._start()
        except BaseException as e:
            self._finish(type(e), e.__traceback__)
            raise
        return self

    def _open(self) -> None:
        """The experiment, and the run: a new one, or the one being resumed (same id, steps go on)."""
        self.experiment_id = ensure_experiment(self.client, self.tcfg.experiment, store_folder(self.uri))
        if self.resume_run_id and not self._known(self.resume_run_id):
            self.resume_run_id = None  # noted in a run directory, but not in this store
        if self.resume_run_id:
            info = self.client.get_run(self.resume_run_id).info
            self.run_id, self.experiment_id, self.name = self.resume_run_id, info.experiment_id, info.run_name
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"runner.task": "train", "runner.run_dir": str(self.run_dir.resolve()), **self.extra_tags}
            commit = git_commit(Path.cwd())
            if commit:
                tags["mlflow.source.git.commit"] = commit
            self.name = self.run_name()
            self.run_id = self.client.create_run(self.experiment_id, run_name=self.name, tags=tags).info.run_id
        self.remember()

    RUN_FILE = "mlflow_run.json"

    def remember(self) -> None:
        """Note the run in its directory (atomically), so that ``train.resume=auto`` continues this
        run even when it was killed before its first checkpoint."""
        import json
        import os

        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / self.RUN_FILE
        tmp = target.with_name(f".{self.RUN_FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"run_id": self.run_id, "experiment_id": self.experiment_id}))
        os.replace(tmp, target)

    def _start(self) -> None:
        from mlflow.entities import Param

        logged = self.logged_steps() if self.resume_run_id else {}
        self.sink = MlflowSink(self.uri, self.run_id, self.tcfg.queue_size, skip_upto=logged,
                               spool_file=str(self.spool), drain_seconds=self.tcfg.drain_timeout_s)
        if self.resume_run_id:
            for k, v in self.extra_tags.items():
                self.client.set_tag(self.run_id, k, v)
            self.sink.replay(self.predecessor_spools())
        else:
            params = [Param(k, v) for k, v in flatten(self.config.plain()).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100], synchronous=True)
        self.sink.wait_ready()
        if self.tcfg.system_metrics:
            self._start_system_metrics()

    def _known(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    @property
    def spool(self) -> Path:
        return self.run_dir / SPOOL

    def predecessor_spools(self) -> list[str]:
        """Spool files an earlier, killed part of this run may have left undelivered."""
        folders = {self.run_dir.resolve()}
        try:
            old = self.client.get_run(self.run_id).data.tags.get("runner.run_dir")
            if old:
                folders.add(Path(old).resolve())
        except Exception:
            pass
        return [str(f / SPOOL) for f in sorted(folders) if (f / SPOOL).is_file()]

    def logged_steps(self) -> dict[str, int]:
        """The last step the store holds for each metric of the run being resumed."""
        run = self.client.get_run(self.run_id)
        out = {}
        for key in run.data.metrics:
            history = self.client.get_metric_history(self.run_id, key)
            if history:
                out[key] = max(m.step for m in history)
        return out

    def run_name(self) -> str:
        if self.tcfg.run_name:
            return self.tcfg.run_name
        if self.name:
            return self.name
        return f"{self.config.model.get('name', 'model')}-{time.strftime('%H%M%S')}"

    def log_artifacts(self) -> None:
        """Queue the run directory's files (reports, ``.hydra/``) for upload by the writer."""
        hydra_dir = self.run_dir / ".hydra"
        files = [str(f) for f in sorted(self.run_dir.glob("*"))
                 if f.is_file() and f.suffix in {".json", ".txt", ".yaml", ".svg"}]
        self.sink.artifacts(files, {str(hydra_dir): "hydra"} if hydra_dir.is_dir() else {})

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, samples_before_logging=1,
                                                 resume_logging=bool(self.resume_run_id), tracking_uri=self.uri)
            self._monitor.start()
        except Exception:  # psutil missing or the monitor unavailable: training goes on without it
            self._monitor = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finish(exc_type, tb)
        return False

    def _finish(self, exc_type, tb=None) -> None:
        """End the run with its true status. A kill (Ctrl-C, SIGTERM) records KILLED first, before
        anything slow, so that a follow-up SIGKILL finds the status already written; whatever the
        store cannot take now is deferred to the spool for the replay command."""
        if exc_type is None:
            self.status = "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, Terminated, SystemExit)) or Terminated.received:
            # SystemExit: a requeue; Terminated.received: the signal's exception became another one
            self.status = "KILLED"
            release_connections(self.uri, tb)  # a store call cut short must not keep a sqlite lock
            self._set_terminated(attempts=1)
        else:
            self.status = "FAILED"
        sink = getattr(self, "sink", None)
        deadline = time.monotonic() + self.tcfg.drain_timeout_s
        try:
            if sink is not None:
                self.sink_report = sink.close()
            if self._monitor is not None:
                self._monitor.finish()
            self._catch_up(deadline)
        finally:
            if not self._set_terminated():
                self.defer({"status": self.status})

    def _catch_up(self, deadline: float) -> None:
        """Deliver what was deferred at the end (tags, uploads, a registration) if the store comes
        back within the drain time; otherwise it stays in the spool for the replay command."""
        rep = self.sink_report
        if not (self.deferred or (rep and rep.deferred)) or (rep and rep.left) or self.status == "KILLED":
            return  # nothing deferred; the store stayed away for the whole drain; or a kill: be quick
        from runner.tracking.spool import append, replay

        while True:
            said: list[str] = []
            try:
                replay(self.spool, self.client, said.append)
            except Exception as e:
                if not (is_outage(e) or is_busy(e)) or time.monotonic() >= deadline:
                    return
                time.sleep(1.0)
                continue
            append(self.spool, {"run_id": self.run_id, "delivered": True})
            names = {"tags": "the health tags", "register": "the registration"}
            self.late = [names.get(d, d) for d in self.deferred] + ([f"{rep.deferred} upload(s)"] if rep and
                                                                    rep.deferred else [])
            self.registered_late = next((line[len("registered "):] for line in said
                                         if line.startswith("registered ")), None)
            self.deferred = []
            if rep:
                rep.deferred = 0
            return

    def _set_terminated(self, attempts: int = 3) -> bool:
        """Record the final status; False when the store cannot be reached."""
        for attempt in range(attempts):
            try:
                self.client.set_terminated(self.run_id, self.status)
                return True
            except Exception as e:
                if not is_outage(e) and not is_busy(e):
                    raise
                if attempt < attempts - 1:
                    time.sleep(1.0)
        return False

    def defer(self, record: dict) -> None:
        """Keep something the store could not take (a status, tags, a registration) in the spool."""
        from runner.tracking.spool import append

        append(self.spool, {"run_id": self.run_id, **record})
        self.deferred.append(next(iter(record)))

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri '{redact(self.uri)}' --host 127.0.0.1 --port 5000"

    def ui_link(self) -> str:
        """The run's page; ``workflowType`` makes the UI show its model-training views."""
        return (f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.run_id}"
                "?workflowType=machine_learning")

    def set_health(self, findings: list) -> None:
        """Tags ``runner.health`` (ok, or how many findings of which rules) and
        ``runner.health.<rule>`` (the first finding's message), and the run's description."""
        tags = {"runner.health": "ok" if not findings else
                f"{len(findings)} finding(s): {', '.join(sorted({f.rule for f in findings}))}"}
        for f in findings:
            tags.setdefault(f"runner.health.{f.rule}", f.message[:4900])
        note = ("**Health: ok** (no findings)" if not findings else
                "**Health:** " + "; ".join(f"{f.rule}: {f.message}" for f in findings[:5]))
        tags["mlflow.note.content"] = (note + "\n\nThe run report: Artifacts → report.html "
                                       "(layer health, gradient flow, update ratios, heat maps).")[:4900]
        try:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        except Exception as e:
            if not is_outage(e):
                raise
            self.defer({"tags": tags})


def release_connections(uri: str, tb=None) -> None:
    """Close this process's connections to a sqlite store (a transaction cut short by a signal
    would otherwise hold its lock while the writer, or the final status, waits on it). A
    connection still checked out is held by the frames the signal's exception unwound (``tb``):
    clearing their variables and collecting frees it, and its transaction rolls back."""
    if tb is not None:
        import gc
        import traceback

        traceback.clear_frames(tb)
        gc.collect()
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.get(uri)
        if engine is not None:
            engine.dispose()
    except Exception:
        pass
