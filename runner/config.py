"""The whole config: one schema per group, validated in one pass with every problem reported at once.

Each group's schema lives in the module that reads it (``TrainConfig`` in ``runner.train.config``,
``InitConfig`` in ``runner.init.rules``, the layer types in ``runner.model.layers``, ...) and is
the one place its defaults are written. The ``default`` presets of ``train``, ``tracking`` and
``checkpoint`` are made from those schemas (:func:`register_defaults`), so ``runner --cfg job``
shows every key and Hydra overrides such as ``train.lr=0.1`` work, with no second copy of the
defaults in YAML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Sequence

from pydantic import Field

from runner.errors import ConfigError, Problem, Problems, first_line
from runner.schema import Noun, Schema, Seed, Text

TASKS = ("train", "inspect")
GROUPS = ("model", "init", "data", "train", "tracking", "checkpoint")


class InspectConfig(Schema):
    """What ``task=inspect`` prints besides the summary and reports."""

    show: Optional[Text] = Field(None, description="a tensor name or glob: print the values of the matching ones")


class TopConfig(Schema):
    """Keys of the root config that belong to no group."""

    task: Annotated[Literal["train", "inspect"], Noun("task")] = Field("train", description="train | inspect")
    seed: Seed = Field(0, description="the run seed: data, every tensor's init stream, training order")
    inspect: InspectConfig = Field(default_factory=InspectConfig, description="task=inspect options")


def schemas() -> dict[str, type[Schema]]:
    """The group schemas whose ``default`` preset is generated (the others have YAML presets)."""
    from runner.checkpoint.config import CheckpointConfig
    from runner.tracking.config import TrackingConfig
    from runner.train.config import TrainConfig

    return {"train": TrainConfig, "tracking": TrackingConfig, "checkpoint": CheckpointConfig}


def register_defaults() -> None:
    """Put each generated ``<group>/default`` preset into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from runner.expr import register_resolvers

    register_resolvers()
    cs = ConfigStore.instance()
    for group, cls in schemas().items():
        cs.store(group=group, name="default", node=cls().node(), provider="runner")
    from runner.docs import help_node

    cs.store(group="hydra/help", name="runner", node=help_node(), provider="runner")


# overrides of keys inside the groups whose presets are YAML files (a preset need not list every key
# its schema has): "data.seed=3", "model.layers.1.out=8", not "data=text" or "+data.seed=3"
_IN_PRESET = re.compile(r"(model|data|init)\.[^=]*=")


def settable(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with every plain ``model.KEY=...`` / ``data.KEY=...`` / ``init.KEY=...``
    written as Hydra's add-or-override (``++data.seed=3``): a YAML preset need not list every key
    its schema has, and one it leaves out is set like one it lists. The schemas then judge the
    keys, all at once, with the data kind's own list (an unknown key is still an error)."""
    return ["++" + item if _IN_PRESET.match(item) else item for item in overrides]


def as_typed(overrides: Sequence[str]) -> list[str]:
    """The inverse of :func:`settable`, for what users read (run tags, sweep job names): the
    ``++`` it adds is left out again."""
    return [item[2:] if item.startswith("++") and _IN_PRESET.match(item[2:]) else item for item in overrides]


def typed_text(text: str) -> str:
    """``text`` (a message of Hydra's quoting overrides) with those :func:`settable` wrote as typed."""
    return _SENT.sub("", text)


_SENT = re.compile(r"\+\+(?=(?:model|data|init)\.[^=\s]*=)")


@dataclass
class RunConfig:
    """A validated config: each group as its typed schema, defaults filled in."""

    task: str
    seed: int
    inspect: InspectConfig
    model: dict            # the model tree as written (nodes are parsed by runner.model)
    init: Any
    data: Any
    train: Any
    tracking: Any
    checkpoint: Any

    def plain(self) -> dict:
        """The resolved config with every default filled in, as plain values (for params and files)."""
        return {"task": self.task, "seed": self.seed, "inspect": self.inspect.plain(), "model": self.model,
                **{g: getattr(self, g).plain() for g in ("init", "data", "train", "tracking", "checkpoint")}}

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def to_plain(cfg: Any) -> dict:
    """A resolved plain-dict copy of an OmegaConf config (or a dict), reporting what cannot resolve."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    p = Problems()
    try:
        for key in sorted(OmegaConf.missing_keys(cfg)):
            p.add(key, "missing required value (set it on the command line, e.g. " f"{key}=...)")
        p.raise_if_any()
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:  # an interpolation that does not resolve, a resolver that fails
        raise ConfigError([Problem(getattr(e, "full_key", "") or "", first_line(e))]) from None


def validate(cfg: Any) -> RunConfig:
    """Check the whole config; return it typed, or raise ConfigError with every problem."""
    from runner.checkpoint.config import CheckpointConfig
    from runner.data import parse_data
    from runner.init.rules import InitConfig
    from runner.model import check_model
    from runner.tracking.config import TrackingConfig
    from runner.train.config import TrainConfig

    if isinstance(cfg, RunConfig):
        return cfg
    plain = to_plain(cfg)
    p = Problems()
    p.unknown_keys(plain, ("task", "seed", "inspect", *GROUPS), "")
    top, problems = TopConfig.parse({k: v for k, v in plain.items() if k in ("task", "seed", "inspect")}, "")
    p.extend(problems)
    for group in GROUPS:
        if group not in plain:
            p.add(group, "missing config group (it was removed; pick a preset, e.g. " f"{group}=...)")
    parsers = {"init": lambda c, path: InitConfig.parse(c if c is not None else {}, path),
               "data": parse_data, "train": TrainConfig.parse, "tracking": TrackingConfig.parse,
               "checkpoint": CheckpointConfig.parse}
    parsed = {}
    if "model" in plain:
        p.extend(check_model(plain["model"], "model"))
    for group, parse in parsers.items():
        if group in plain:
            parsed[group], problems = parse(plain[group], group)
            p.extend(problems)
    p.raise_if_any()
    return RunConfig(top.task, top.seed, top.inspect, plain["model"], **parsed)

