"""What the MLflow store would refuse, checked before a run exists.

MLflow's own validators decide (names of params, metrics, experiments and registered models;
lengths), applied to everything a run will send: the flattened config as params, every metric key
the model's tensors and layers give, the experiment and the registered model's name. A name the
store would reject is a config problem named by its config path, not a batch the writer finds
refused halfway through training.
"""
from __future__ import annotations

from runner.errors import Problem, first_line


def _refused(check, *args) -> str | None:
    try:
        check(*args)
    except Exception as e:  # MlflowException: the store's own words
        return first_line(e)
    return None


def problems(params: dict[str, str], metric_keys: list[str], experiment: str,
             registered: tuple[str, str] | None) -> list[Problem]:
    """Problems with what a run would log; ``registered``: (config path, name) when registering."""
    from mlflow.utils.validation import (
        MAX_ENTITY_KEY_LENGTH,
        _validate_experiment_name,
        _validate_model_name,
        _validate_param_name,
    )

    from runner.tracking.spool import refusal

    out: list[Problem] = []
    for key in params:
        msg = _refused(_validate_param_name, key) or (
            f"is {len(key)} characters long; MLflow takes at most {MAX_ENTITY_KEY_LENGTH}"
            if len(key) > MAX_ENTITY_KEY_LENGTH else None)
        if msg:
            out.append(Problem(key, f"cannot be an MLflow param name: {msg}"))
    seen = set()
    for key in metric_keys:
        msg = refusal(key) or (
            f"is {len(key)} characters long; MLflow takes at most {MAX_ENTITY_KEY_LENGTH}"
            if len(key) > MAX_ENTITY_KEY_LENGTH else None)
        if msg and key not in seen:
            seen.add(key)
            out.append(Problem("model", f"the metric key {key!r} (from a layer or tensor name) would be refused by "
                                        f"MLflow: {msg}"))
    msg = _refused(_validate_experiment_name, experiment)
    if msg:
        out.append(Problem("tracking.experiment", msg))
    if registered is not None:
        msg = _refused(_validate_model_name, registered[1])
        if msg:
            out.append(Problem(registered[0], f"cannot name a registered model: {msg} (set "
                                              "checkpoint.registered_name, or checkpoint.register=false)"))
    return out
