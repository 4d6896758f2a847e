"""The weight registry on MLflow's Model Registry (works on the sqlite store, no server).

At the end of a run the final checkpoint (and the best one, when it differs) is logged to the
run under ``checkpoints/final`` (``checkpoints/best``), and the final weights are registered as
a new version of a registered model. Version tags record the run, step, metric and tie groups;
the alias ``best`` follows the version with the best metric (``models:/<name>/latest`` is
MLflow's own name for the newest version).

A REF names weights anywhere: a checkpoint entry, ``checkpoints/`` folder, run directory or
``.safetensors`` file; ``runs:/<run_id>/<artifact path>``; ``models:/<name>/<version>``,
``models:/<name>/latest`` or ``models:/<name>@<alias>``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from runner.checkpoint.checkpointer import WEIGHTS, find_entry
from runner.checkpoint.store import Entry
from runner.checkpoint.weights import CheckpointError, DamagedCheckpoints, read_metadata
from runner.errors import first_line

BEST = "best"


def _register(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="Weights registered by runner")
        except MlflowException:
            pass  # created meanwhile by another run


def publish(client: Any, run_id: str, final: Entry, best: Entry | None, name: str, metric: str | None,
            mode: str, overrides: str = "(defaults)") -> str:
    """Log the final (and best) checkpoint to the run and register the final weights; returns its
    models:/ URI. The version is tagged with what tells it apart from the others: the command
    line's overrides, the step and the metric (its description starts with them too, as the
    registry's version list shows a description's first characters). A run that registers the
    same step again (a resumed run with nothing left to train) gets its existing version back. A
    sqlite store busy with another job is waited for."""
    from runner.tracking.spool import retry_busy

    existing = [v for v in retry_busy(lambda: client.search_model_versions(f"name='{name}'"))
                if v.run_id == run_id and v.tags.get("step") == str(final.step)] if _exists(client, name) else []
    if existing:
        return f"models:/{name}/{existing[0].version}"
    retry_busy(lambda: client.log_artifacts(run_id, str(final.path), "checkpoints/final"))
    if best is not None and best.path != final.path:
        retry_busy(lambda: client.log_artifacts(run_id, str(best.path), "checkpoints/best"))
    meta = read_metadata(final.path / WEIGHTS)
    ties = json.loads(meta.get("runner.tie_map", "{}"))
    tags = {"run_id": run_id, "step": str(final.step), "tie_groups": str(len(ties)), "overrides": overrides[:5000]}
    value = final.metrics.get(metric) if metric else None
    if value is not None:
        tags.update({"metric": metric, "metric_value": repr(float(value))})
    description = f"{overrides}; step {final.step}" + (f"; {metric} {value:.4g}" if value is not None else "")
    retry_busy(lambda: _register(client, name))
    mv = retry_busy(lambda: client.create_model_version(name, source=f"runs:/{run_id}/checkpoints/final",
                                                        run_id=run_id, tags=tags, description=description))
    if value is not None:
        retry_busy(lambda: point_best(client, name, metric, mode))
    return f"models:/{name}/{mv.version}"


def _exists(client: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    from runner.tracking.spool import retry_busy

    try:
        retry_busy(lambda: client.get_registered_model(name))
        return True
    except MlflowException:
        return False


def point_best(client: Any, name: str, metric: str, mode: str) -> str | None:
    """Point the alias ``best`` at the version with the best ``metric``, among all versions (not
    only the newest against the current best): jobs that register at the same time all end by
    computing the same answer, whatever order their writes land in."""
    scored = [v for v in client.search_model_versions(f"name='{name}'")
              if v.tags.get("metric") == metric and v.tags.get("metric_value") is not None]
    if not scored:
        return None
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda v: (float(v.tags["metric_value"]), -int(v.version) if mode == "min" else int(v.version)))
    client.set_registered_model_alias(name, BEST, best.version)
    return str(best.version)


def publish_deferred(client: Any, run_id: str, record: dict) -> str:
    """Register what a run could not register at its end (a spool ``register`` record)."""
    from runner.checkpoint.store import verify

    final = verify(Path(record["final"]))
    best = verify(Path(record["best"])) if record.get("best") else None
    return publish(client, run_id, final, best, record["name"], record.get("metric"), record.get("mode", "min"),
                   record.get("overrides", "(defaults)"))


def read_ref(ref: str, tracking_uri: str | None = None, client: Any = None):
    """(tensors, metadata, description) of the weights a REF names; remote weights are downloaded
    into a temporary folder that is gone again when this returns. Checkpoint entries are verified
    (checksums) like every other read."""
    from runner.checkpoint.weights import read_weights

    if ref.startswith(("runs:/", "models:/")):
        if client is None:
            from runner.tracking.config import client as mlflow_client

            client = mlflow_client(tracking_uri)
        run_id, path, desc = _remote(ref, client)
        with tempfile.TemporaryDirectory(prefix="runner-weights-") as dst:
            try:
                local = Path(client.download_artifacts(run_id, path, dst))
            except Exception as e:
                raise CheckpointError(f"{ref}: cannot download the weights ({first_line(e)})") from None
            tensors, meta = read_weights(_weights_in(local))
        return tensors, meta, desc
    path = Path(ref)
    if not path.exists():
        raise CheckpointError(f"{ref}: no such file or folder (a REF is a path, runs:/<run_id>/<path> or "
                              "models:/<name>/<version|latest> or models:/<name>@<alias>)")
    tensors, meta = read_weights(_weights_in(path))
    return tensors, meta, str(path)


def _weights_in(path: Path) -> Path:
    """The weights file of a path: itself, a checkpoint entry's, or a plain folder's."""
    if path.is_file():
        return path
    try:
        return find_entry(path).path / WEIGHTS
    except CheckpointError as e:
        if (path / WEIGHTS).is_file():
            return path / WEIGHTS
        if isinstance(e, DamagedCheckpoints):  # entries there, all damaged: say how
            raise
        raise CheckpointError(f"{path}: no committed checkpoint or weights file found") from None


def _remote(ref: str, client: Any) -> tuple[str, str, str]:
    from mlflow.exceptions import MlflowException

    if ref.startswith("runs:/"):
        run_id, _, path = ref[len("runs:/"):].partition("/")
        return run_id, path or "checkpoints/final", ref
    body = ref[len("models:/"):]
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = body.partition("/")
            if version in ("", "latest"):
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise CheckpointError(f"{ref}: the registered model {name!r} has no versions")
                mv = max(versions, key=lambda v: int(v.version))
            else:
                mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise CheckpointError(f"{ref}: {first_line(e)}") from None
    source = mv.source
    if not source.startswith("runs:/"):
        raise CheckpointError(f"{ref}: version {mv.version} has source {source}, not a run artifact")
    run_id, _, path = source[len("runs:/"):].partition("/")
    return run_id, path, f"{ref} (version {mv.version}, run {run_id})"
