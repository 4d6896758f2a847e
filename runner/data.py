"""Datasets and batches.

Every dataset is a pair of tensors split into train and validation parts. Batches come from a
seeded, per-epoch permutation, so the data position is just ``(epoch, batch index)`` and a
resumed run sees exactly the batches an uninterrupted one would.

Kinds (``data.kind``):
- ``uniform_regression``: features drawn U(0, 1) (the reference chapter's input), targets from a
  fixed random teacher MLP plus Gaussian noise.
- ``classification``: Gaussian clusters, one per class.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (offline), images of shape (8, 8).
- ``file``: your own ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` (last column is the target).

``autoencode: true`` replaces the targets by the (flattened) inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from runner.errors import ConfigError, Problem, Problems, UserError, did_you_mean, one_of

KINDS = {
    "uniform_regression": {"features", "samples", "teacher_hidden", "noise"},
    "classification": {"features", "classes", "samples", "spread"},
    "digits": set(),
    "file": {"path", "task", "x_key", "y_key"},
}
COMMON = {"kind", "batch_size", "val_fraction", "shuffle", "seed", "nan_at", "autoencode"}
TASKS = {"regression", "classification"}


def check_data(cfg: Any, path: str = "data") -> list[Problem]:
    p = Problems()
    if not isinstance(cfg, dict):
        p.add(path, "must be a mapping")
        return p.items
    kind = cfg.get("kind")
    if kind not in KINDS:
        p.add(f"{path}.kind", f"unknown data kind {kind!r}{did_you_mean(str(kind), KINDS)}; known: {one_of(KINDS)}")
        return p.items
    allowed = COMMON | KINDS[kind]
    p.unknown_keys(cfg, allowed, path, f" for kind {kind!r}")
    for key in ("features", "samples", "classes", "teacher_hidden", "batch_size"):
        if key in allowed:
            p.number(cfg, key, path, nullable=True)
    vf = cfg.get("val_fraction", 0.2)
    if not isinstance(vf, (int, float)) or isinstance(vf, bool) or not 0 <= vf < 1:
        p.add(f"{path}.val_fraction", f"must be in [0, 1), got {vf!r}")
    if kind == "classification" and isinstance(cfg.get("classes"), int) and cfg["classes"] < 2:
        p.add(f"{path}.classes", "must be at least 2")
    if kind == "file":
        fp = cfg.get("path")
        if not fp:
            p.add(f"{path}.path", "missing required value (a .npz or .csv file)")
        elif not Path(fp).is_file():
            p.add(f"{path}.path", f"no such file: {fp}")
        elif Path(fp).suffix not in {".npz", ".csv"}:
            p.add(f"{path}.path", f"must be a .npz or .csv file, got {fp}")
        if cfg.get("task", "regression") not in TASKS:
            p.add(f"{path}.task", f"must be one of {one_of(TASKS)}, got {cfg.get('task')!r}")
    return p.items


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: str  # "regression" or "classification"
    batch_size: int
    shuffle: bool
    seed: int
    num_classes: int = 0

    def sample(self) -> torch.Tensor:
        """A batch of training inputs, used to infer every layer's shape."""
        return self.x_train[: self.batch_size]

    @property
    def batches_per_epoch(self) -> int:
        return max(1, -(-len(self.x_train) // self.batch_size))

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.x_train))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.x_train), generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(batch index, x, y) for one epoch, from batch ``start`` on."""
        idx = self.order(epoch)
        for b in range(start, self.batches_per_epoch):
            sel = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield b, self.x_train[sel], self.y_train[sel]


def load_data(cfg: dict, seed: int = 0) -> Dataset:
    problems = check_data(cfg)
    if problems:
        raise ConfigError(problems)
    seed = int(cfg.get("seed", seed) if cfg.get("seed") is not None else seed)
    g = torch.Generator().manual_seed(seed)
    kind = cfg["kind"]
    num_classes = 0
    if kind == "uniform_regression":
        n, f = cfg.get("samples", 512), cfg.get("features", 4)
        x = torch.rand(n, f, generator=g)
        h = cfg.get("teacher_hidden", 8)
        w1, w2 = torch.randn(f, h, generator=g), torch.randn(h, 1, generator=g)
        y = torch.tanh(x @ w1) @ w2 / h**0.5 + cfg.get("noise", 0.01) * torch.randn(n, 1, generator=g)
        task = "regression"
    elif kind == "classification":
        n, f, c = cfg.get("samples", 512), cfg.get("features", 8), cfg.get("classes", 3)
        centers = 3.0 * torch.randn(c, f, generator=g)
        y = torch.randint(0, c, (n,), generator=g)
        x = centers[y] + cfg.get("spread", 1.0) * torch.randn(n, f, generator=g)
        task, num_classes = "classification", c
    elif kind == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        task, num_classes = "classification", 10
    else:
        x, y, task = _read_file(cfg)
        num_classes = int(y.max()) + 1 if task == "classification" else 0
    if cfg.get("autoencode"):  # learn to reproduce the input (tied autoencoders)
        y, task, num_classes = x.reshape(len(x), -1).clone(), "regression", 0
    if cfg.get("nan_at") is not None:  # corrupt one sample: exercises the non-finite policy
        x = x.clone()
        x[int(cfg["nan_at"])] = float("nan")
    # the split is its own seeded permutation, independent of the training order
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    n_val = int(len(x) * cfg.get("val_fraction", 0.2))
    val, train = perm[:n_val], perm[n_val:]
    if len(train) == 0:
        raise UserError("data: no training samples left after the validation split")
    return Dataset(x[train], y[train], x[val], y[val], task, int(cfg.get("batch_size", 32)),
                   bool(cfg.get("shuffle", True)), seed, num_classes)


def _read_file(cfg: dict) -> tuple[torch.Tensor, torch.Tensor, str]:
    import numpy as np

    path = Path(cfg["path"])
    task = cfg.get("task", "regression")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                xk, yk = cfg.get("x_key", "x"), cfg.get("y_key", "y")
                missing = [k for k in (xk, yk) if k not in z.files]
                if missing:
                    raise UserError(f"data.path: {path} has no array {missing[0]!r} (arrays: {', '.join(z.files)})")
                x, y = z[xk], z[yk]
        else:
            arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
            x, y = arr[:, :-1], arr[:, -1]
    except UserError:
        raise
    except Exception as e:  # numpy's parse errors: report the file, not a trace
        raise UserError(f"data.path: cannot read {path}: {e}") from None
    if len(x) != len(y):
        raise UserError(f"data.path: {path} has {len(x)} inputs but {len(y)} targets")
    xt = torch.as_tensor(x, dtype=torch.float32)
    if task == "classification":
        yt = torch.as_tensor(y).long()
    else:
        yt = torch.as_tensor(y, dtype=torch.float32)
        yt = yt.reshape(len(yt), -1)
    return xt, yt, task
