"""The ``train`` group's schema: every training setting, its default and what it means.

Optimizer and schedule arguments are checked by building them against a dummy parameter, so a
bad argument (a negative momentum, a zero ``step_size``) fails before anything runs.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field

from runner.errors import first_line
from runner.schema import Noun, PosFloat, PosInt, Schema, Text

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "exponential")


class NonFinite(Schema):
    """What to do when the loss or the gradients stop being finite."""

    policy: Literal["skip", "abort_after", "abort"] = Field(
        "abort_after", description="skip (skip the step, count it) | abort_after (patience in a row) | abort")
    patience: PosInt = Field(3, description="bad steps in a row before abort_after stops")


class TrainConfig(Schema):
    """How to train: optimizer, schedule, length, loss, device, non-finite policy, resume."""

    optimizer: Annotated[Literal["sgd", "adam", "adamw"], Noun("optimizer")] = Field("adam", description="sgd | adam | adamw")
    lr: PosFloat = Field(0.01, description="learning rate")
    optimizer_args: dict[str, Any] = Field(default_factory=dict, description="more torch.optim arguments, e.g. "
                                           "{weight_decay: 1.0e-4} (sgd: {momentum: 0.9})")
    schedule: Optional[Annotated[Literal["step", "cosine", "exponential"], Noun("schedule")]] = Field(
        None, description="null | step | cosine | exponential")
    schedule_args: dict[str, Any] = Field(default_factory=dict, description="step: {step_size, gamma}; "
                                          "exponential: {gamma}; cosine: {} (over all steps)")
    epochs: PosInt = Field(10, description="passes over the training data")
    max_steps: Optional[PosInt] = Field(None, description="stop after this many steps, if that comes first")
    grad_clip: Optional[PosFloat] = Field(None, description="clip the global gradient norm to this value")
    loss: Literal["auto", "mse", "l1", "cross_entropy"] = Field(
        "auto", description="auto: mse for regression, cross_entropy for classes and tokens")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when present")
    strategy: Annotated[Literal["auto", "single", "ddp", "fsdp"], Noun("strategy")] = Field(
        "auto", description="auto: ddp under torchrun, one process otherwise | single | ddp | fsdp (FSDP2)")
    precision: Annotated[Literal["fp32", "bf16", "fp16"], Noun("precision")] = Field(
        "fp32", description="fp32 | bf16 (autocast) | fp16 (autocast and a gradient scaler)")
    accumulate: PosInt = Field(1, description="micro-batches per optimizer step (each of data.batch_size)")
    compile: bool = Field(False, description="torch.compile the model (activation statistics are then unavailable)")
    sync_batchnorm: bool = Field(True, description="under torchrun, batch norms use the statistics of the global "
                                                   "batch")
    nonfinite: NonFinite = Field(default_factory=NonFinite, description="non-finite loss or gradients")
    progress: Literal["auto", "bar", "quiet"] = Field("auto", description="auto: a bar on a terminal, a line per "
                                                      "epoch otherwise")
    resume: Optional[Text] = Field(None, description="null | auto (newest checkpoint of this run directory) | "
                                                     "a checkpoint or run directory | an MLflow run id")

    def problems(self):
        if not self.optimizer_args and self.schedule is None:
            return  # the built-in optimizers take any positive finite lr; building one costs seconds
        from runner.train.optim import make_optimizer, make_schedule

        import torch

        dummy = [torch.nn.Parameter(torch.zeros(1))]
        try:
            opt = make_optimizer(dummy, self)
        except Exception as e:
            yield "optimizer_args", f"{self.optimizer} refuses these arguments: {first_line(e)}"
            return
        try:
            sched = make_schedule(opt, self, 10)
            for _ in range(3):  # some arguments only fail when the schedule steps
                opt.step()
                if sched is not None:
                    sched.step()
        except Exception as e:
            yield "schedule_args", f"the {self.schedule} schedule refuses these arguments: {first_line(e)}"


def check_train(cfg: Any, path: str = "train") -> list:
    return TrainConfig.parse(cfg, path)[1]
