"""Datasets and batches.

Every dataset has a train and a validation part. Batches come from a seeded, per-epoch order, so
the data position is just ``(epoch, batch index)`` and a resumed run sees exactly the batches an
uninterrupted one would.

Kinds (``data.kind``), one schema each:
- ``uniform_regression``: features drawn U(0, 1) (the reference chapter's input), targets from a
  fixed random teacher MLP plus Gaussian noise.
- ``classification``: Gaussian clusters, one per class.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (offline), images of shape (8, 8).
- ``file``: your own ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` (last column is the target).
- ``text``: characters of a text file (default: the docstrings of Python's standard library), for
  next-character language models (``runner.data.text``).

``autoencode: true`` replaces the targets by the (flattened) inputs.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional

import annotated_types as at
import torch
from pydantic import Field, Strict

from runner.data.base import Dataset, TensorDataset
from runner.errors import ConfigError, Problem, UserError, did_you_mean, one_of
from runner.schema import Expect, Fraction, NonNegFloat, NonNegInt, PosInt, Schema, Seed, Text

__all__ = ["DataConfig", "Dataset", "TensorDataset", "check_data", "load_data", "parse_data"]


class DataConfig(Schema):
    """Fields every data kind has."""

    kind: str = Field(description="which data")
    batch_size: PosInt = Field(32, description="samples per optimizer step (the global batch under torchrun)")
    val_fraction: Fraction = Field(0.2, description="share held out for validation")
    shuffle: bool = Field(True, description="a new seeded order every epoch")
    seed: Optional[Seed] = Field(None, description="data seed (default: the run seed)")
    nan_at: Optional[NonNegInt] = Field(None, description="corrupt this sample with NaN (to try the non-finite policy)")
    autoencode: bool = Field(False, description="the (flattened) input is its own target")

    kind_name: ClassVar[str] = ""

    @classmethod
    def type_label(cls) -> str:
        return f"kind {cls.kind_name}"


class UniformRegressionData(DataConfig):
    """The chapter's input: features U(0, 1), targets from a fixed random teacher MLP."""

    kind_name = "uniform_regression"
    features: PosInt = Field(4, description="input features")
    samples: PosInt = Field(512, description="number of samples")
    teacher_hidden: PosInt = Field(8, description="hidden units of the teacher network")
    noise: NonNegFloat = Field(0.01, description="std of the Gaussian noise on the targets")


class ClassificationData(DataConfig):
    """Gaussian clusters, one per class."""

    kind_name = "classification"
    features: PosInt = Field(8, description="input features")
    classes: Annotated[int, Strict(), at.Ge(2), Expect("an integer of at least 2")] = Field(
        3, description="number of classes")
    samples: PosInt = Field(1024, description="number of samples")
    spread: NonNegFloat = Field(1.0, description="std of each cluster")


class DigitsData(DataConfig):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), no download."""

    kind_name = "digits"


class FileData(DataConfig):
    """Your .npz (arrays x, y) or .csv (last column is the target)."""

    kind_name = "file"
    path: Text = Field(description="a .npz or .csv file")
    task: Literal["regression", "classification"] = Field("regression", description="what the targets are")
    x_key: Text = Field("x", description="the inputs' array in a .npz")
    y_key: Text = Field("y", description="the targets' array in a .npz")
    classes: Optional[PosInt] = Field(None, description="number of classes (default: the largest label + 1)")

    def problems(self):
        from pathlib import Path

        p = Path(self.path)
        if not p.is_file():
            yield "path", f"no such file: {self.path}"
        elif p.suffix not in {".npz", ".csv"}:
            yield "path", f"must be a .npz or .csv file, got {self.path}"


class TextData(DataConfig):
    """Characters of a text file for next-character prediction (default: Python's own docstrings)."""

    kind_name = "text"
    path: Optional[Text] = Field(None, description="a UTF-8 text file; null: the standard library's docstrings")
    block_size: PosInt = Field(64, description="context length in characters")
    steps_per_epoch: PosInt = Field(200, description="batches of random windows per epoch")
    max_chars: Optional[PosInt] = Field(None, description="use at most this many characters of the text")
    val_fraction: Fraction = Field(0.1, description="the text's tail held out for validation")

    def problems(self):
        from pathlib import Path

        if self.path is not None and not Path(self.path).is_file():
            yield "path", f"no such file: {self.path}"
        if self.nan_at is not None or self.autoencode:
            yield "", "nan_at and autoencode do not apply to text"


KINDS: dict[str, type[DataConfig]] = {c.kind_name: c for c in (UniformRegressionData, ClassificationData, DigitsData, FileData, TextData)}


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits as (images in [0, 1], labels), read from the file
    scikit-learn ships (importing scikit-learn itself takes seconds)."""
    import gzip
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return torch.tensor(d.images, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.long)
    with gzip.open(path) as f:
        table = np.loadtxt(f, delimiter=",")
    return (torch.tensor(table[:, :-1].reshape(-1, 8, 8), dtype=torch.float32) / 16.0,
            torch.tensor(table[:, -1], dtype=torch.long))


def parse_data(cfg: Any, path: str = "data") -> tuple[DataConfig | None, list[Problem]]:
    if isinstance(cfg, DataConfig):
        return cfg, []
    if not isinstance(cfg, dict):
        return None, [Problem(path, "must be a mapping with a kind")]
    kind = cfg.get("kind")
    if kind not in KINDS:
        return None, [Problem(f"{path}.kind", f"unknown data kind {kind!r}{did_you_mean(str(kind), KINDS)}; "
                                              f"known: {one_of(KINDS)}")]
    return KINDS[kind].parse(cfg, path)


def check_data(cfg: Any, path: str = "data") -> list[Problem]:
    return parse_data(cfg, path)[1]


def load_data(cfg: Any, seed: int = 0) -> Dataset:
    data, problems = parse_data(cfg)
    if problems:
        raise ConfigError(problems)
    seed = data.seed if data.seed is not None else seed
    if isinstance(data, TextData):
        from runner.data.text import load_text

        return load_text(data, seed)
    g = torch.Generator().manual_seed(seed)
    num_classes = 0
    if isinstance(data, UniformRegressionData):
        n, f = data.samples, data.features
        x = torch.rand(n, f, generator=g)
        h = data.teacher_hidden
        w1, w2 = torch.randn(f, h, generator=g), torch.randn(h, 1, generator=g)
        y = torch.tanh(x @ w1) @ w2 / h**0.5 + data.noise * torch.randn(n, 1, generator=g)
        task = "regression"
    elif isinstance(data, ClassificationData):
        n, f, c = data.samples, data.features, data.classes
        centers = 3.0 * torch.randn(c, f, generator=g)
        y = torch.randint(0, c, (n,), generator=g)
        x = centers[y] + data.spread * torch.randn(n, f, generator=g)
        task, num_classes = "classification", c
    elif isinstance(data, DigitsData):
        x, y = digits()
        task, num_classes = "classification", 10
    else:
        from runner.data.files import read_file

        x, y, task, num_classes = read_file(data)
    if data.autoencode:  # learn to reproduce the input (tied autoencoders)
        y, task, num_classes = x.reshape(len(x), -1).clone(), "regression", 0
    if data.nan_at is not None:  # corrupt one sample: exercises the non-finite policy
        if data.nan_at >= len(x):
            raise ConfigError([Problem("data.nan_at", f"is {data.nan_at} but the data has {len(x)} samples")])
        x = x.clone()
        x[data.nan_at] = float("nan")
    # the split is its own seeded permutation, independent of the training order
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    n_val = int(len(x) * data.val_fraction)
    val, train = perm[:n_val], perm[n_val:]
    if len(train) == 0:
        raise UserError("data: no training samples left after the validation split")
    return TensorDataset(x[train], y[train], x[val], y[val], task, data.batch_size, data.shuffle, seed, num_classes)
