"""The ``tracking`` group's schema, and the default store location."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field

from runner.schema import NonNegInt, Noun, PosFloat, PosInt, Schema, Text

WEIGHT_STATS = ("mean", "std", "min", "max", "norm")  # what can be asked for
GRAD_STATS = ("mean", "std", "maxabs", "norm")
# what is logged unless asked otherwise: what the health verdict reads, and the gradient's peak.
# Every value costs the store ~0.2 ms of CPU (MLflow's sqlite ingest), so the default set is the
# one a reviewer needs; the rest of a distribution is in the heat maps.
DEFAULT_WEIGHT_STATS = ("std", "norm")
DEFAULT_GRAD_STATS = ("norm", "maxabs")


class Stats(Schema):
    """Which per-tensor statistics each logging step writes."""

    weights: list[Annotated[Literal[WEIGHT_STATS], Noun("statistic")]] = Field(
        default_factory=lambda: list(DEFAULT_WEIGHT_STATS), description="of each parameter's values (any of "
        + ", ".join(WEIGHT_STATS) + ")")
    grads: list[Annotated[Literal[GRAD_STATS], Noun("statistic")]] = Field(
        default_factory=lambda: list(DEFAULT_GRAD_STATS), description="of each parameter's gradient (any of "
        + ", ".join(GRAD_STATS) + ")")
    update_ratio: bool = Field(True, description="||w_after - w_before|| / ||w_after|| of the logged step")


class Histograms(Schema):
    """Heat maps of each tensor's distribution over training."""

    enabled: bool = Field(True, description="keep samples and draw the heat maps")
    sample: PosInt = Field(1024, description="values kept per tensor at each logging step")
    bins: PosInt = Field(40, description="histogram bins")


class Report(Schema):
    """The HTML run report (report.html) and the heat maps, drawn by the writer process."""

    enabled: bool = Field(True, description="write report.html into the run directory and the run's artifacts")
    every_n_epochs: NonNegInt = Field(5, description="also redraw it (and the heat maps) every N epochs; 0: at the "
                                                     "end only")


class TrackingConfig(Schema):
    """Where and what to log to MLflow."""

    enabled: bool = Field(True, description="false: train without MLflow")
    uri: Optional[Text] = Field(None, description="null: sqlite:///<launch dir>/outputs/mlflow.db; or any MLflow "
                                                  "tracking URI")
    experiment: Text = Field("runner", description="MLflow experiment name")
    run_name: Optional[Text] = Field(None, description="null: <model>-<time>")
    every_n_steps: PosInt = Field(10, description="statistics are computed and logged on these steps (and step 1)")
    stats: Stats = Field(default_factory=Stats, description="statistics per tensor")
    activations: bool = Field(False, description="forward-hook stats per layer: act_mean, act_std, act_dead (ReLU)")
    histograms: Histograms = Field(default_factory=Histograms, description="distribution heat maps")
    report: Report = Field(default_factory=Report, description="the run report")
    max_keys: PosInt = Field(1000, description="refuse a config that would write more metric keys per run")
    queue_size: PosInt = Field(10_000, description="logging steps that may wait for the store before training waits")
    system_metrics: bool = Field(True, description="cpu/memory/gpu under system/ (psutil)")
    http_timeout_s: PosFloat = Field(10, description="with a tracking server: seconds before a request counts as failed")
    drain_timeout_s: PosFloat = Field(120, description="at the end, how long to keep retrying batches spooled in an "
                                                       "outage")


def check_tracking(cfg: Any, path: str = "tracking") -> list:
    return TrackingConfig.parse(cfg, path)[1]


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]+)@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text) if isinstance(text, str) else text


def connect_uri(uri: str) -> str:
    """The URI MLflow should connect to: an HTTP(S) server's ``user:password@`` moves into
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (how MLflow takes credentials), so
    that nothing the runner prints, logs or saves carries them."""
    m = _CREDENTIALS.match(uri)
    if m is None or m["scheme"].lower() not in ("http://", "https://"):
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = m["user"], m["password"]
    return m["scheme"] + uri[m.end():]


def client(uri: str | None = None):
    """An ``MlflowClient`` on ``uri`` (default: ``default_uri()``), MLflow's INFO chatter off."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(connect_uri(uri or default_uri()))


def check_store(uri: str) -> None:
    """Fail at once, with a clear message, on a store MLflow could not open (it would otherwise
    retry for minutes, or fail with a library trace)."""
    from runner.errors import UserError

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"tracking.uri: cannot create the folder of the sqlite store {path.parent}: "
                            f"{e.strerror or e}") from None
        if path.is_dir():
            raise UserError(f"tracking.uri: {path} is a folder, not a sqlite database file")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
            raise UserError(f"tracking.uri: cannot write the sqlite store {path} (permission denied)")
        return
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    known = sorted(k for k in _tracking_store_registry._registry if k)
    if scheme.split("+")[0] not in known:  # postgresql+psycopg2: a database and its driver
        raise UserError(f"tracking.uri: MLflow has no store for {redact(uri)!r} (known schemes: {', '.join(known)})")


def default_uri(base: Path | None = None) -> str:
    """``sqlite:////abs/outputs/mlflow.db`` under ``base`` (the launch directory)."""
    path = ((base or Path.cwd()) / "outputs" / "mlflow.db").resolve()
    return f"sqlite:///{path}"
