"""The Python API: the same composition, building, naming and reports the CLI uses.

    import runner
    net = runner.build(model="d2l_nested", init="d2l_xavier_42")
    net[0][1][1].bias is net.param("body.block-1.dense.bias")   # True
    runner.show(net)                                            # summary + parameter table
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

CONF_MODULE = "runner.conf"


def compose(overrides: Sequence[str] = (), **groups: Any):
    """The runner's config with presets and overrides, as the CLI would compose it.

    ``groups`` pick a preset by name (``model="d2l_nested"``) or give a whole group as a dict.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf, open_dict

    from runner.config import register_defaults, settable

    register_defaults()
    picks = [f"{g}={v}" for g, v in groups.items() if isinstance(v, str)]
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=settable([*picks, *overrides]))
    with open_dict(cfg):
        for g, v in groups.items():
            if isinstance(v, dict):
                cfg[g] = OmegaConf.create(v)
            elif v is not None and not isinstance(v, str):
                cfg[g] = v
    return cfg


@dataclass
class Prepared:
    """Everything built from a config before training: the validated config (``runner.config.
    RunConfig``), data, model, init report."""

    config: Any
    data: Any
    net: Any
    init_report: Any


def prepare(cfg: Any) -> Prepared:
    """Validate a whole config and build data, model, ties and initial values from it."""
    from runner.config import validate
    from runner.data import load_data
    from runner.init import apply_init
    from runner.model import build_model

    config = validate(cfg)
    data = load_data(config.data, config.seed)
    net = build_model(config.model, data.sample(), data.context(), config.seed)
    report = apply_init(net, config.init, config.seed, tracking_uri=config.tracking.uri)
    net.init_report = report
    return Prepared(config, data, net, report)


def build(model: str | dict = "d2l_mlp", init: str | dict | None = None, data: str | dict | None = None,
          seed: int | None = None, overrides: Sequence[str] = ()):
    """Build and initialise a model from presets or dicts; returns the :class:`runner.model.Network`.

    The init report is on ``net.init_report``.
    """
    extra = [*overrides] + ([f"seed={seed}"] if seed is not None else [])
    groups = {k: v for k, v in {"model": model, "init": init, "data": data}.items() if v is not None}
    return prepare(compose(extra, **groups)).net


def show(net, values: str | None = None, console=None) -> None:
    """Print the summary, the parameter table and, when given a glob, the matching values."""
    from runner import tables

    tables.print_inspection(net, getattr(net, "init_report", None), values, console)
