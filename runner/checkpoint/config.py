"""The ``checkpoint`` group's schema."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field

from runner.schema import NonNegInt, PosInt, Schema, Text


class CheckpointConfig(Schema):
    """When to write checkpoints, which to keep, and what to register."""

    enabled: bool = Field(True, description="write checkpoints at each epoch end")
    every_n_steps: Optional[PosInt] = Field(None, description="also write one every N steps")
    keep_last: PosInt = Field(3, description="keep the newest K checkpoints ...")
    keep_best: NonNegInt = Field(1, description="... plus the best K by best_metric")
    best_metric: Optional[Text] = Field("val/loss", description="what 'best' means")
    best_mode: Literal["min", "max"] = Field("min", description="min | max")
    register_: bool = Field(True, alias="register", description="log the final (and best) weights to the run and "
                                                                "register them")
    registered_name: Optional[Text] = Field(None, description="null: the model's name")


def check_checkpoint(cfg: Any, path: str = "checkpoint") -> list:
    return CheckpointConfig.parse(cfg, path)[1]
