"""Your own data files: ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` (the last column is the target).

Everything that would make training fail later, or silently learn the wrong thing, is refused
here with the file and the reason: empty files, 0-d arrays, non-numeric values, NaN or infinite
values (also those too large for float32), inputs and targets of different lengths, and class
labels that are negative, fractional or out of range.
"""
from __future__ import annotations

from pathlib import Path

import torch

from runner.errors import UserError, first_line


class DataFileError(UserError):
    """A data file that cannot be used."""


def read_file(cfg) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    """(x, y, task, number of classes) from ``cfg.path``."""
    import numpy as np

    path = Path(cfg.path)
    where = f"data.path: {path}"
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in (cfg.x_key, cfg.y_key) if k not in z.files]
                if missing:
                    raise DataFileError(f"{where} has no array {missing[0]!r} (arrays: {', '.join(z.files) or 'none'})")
                x, y = z[cfg.x_key], z[cfg.y_key]
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy only warns about an empty file
                arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
            if arr.shape[1] < 2:
                raise DataFileError(f"{where} has {arr.shape[1]} column(s); it needs inputs and a last column of targets")
            x, y = arr[:, :-1], arr[:, -1]
    except DataFileError:
        raise
    except Exception as e:  # numpy's parse errors, a file that is not an archive, an empty file
        raise DataFileError(f"{where} cannot be read: {first_line(e)}") from None
    for name, a in ((cfg.x_key if path.suffix == ".npz" else "inputs", x), (cfg.y_key if path.suffix == ".npz" else "targets", y)):
        if a.ndim == 0:
            raise DataFileError(f"{where}: {name} is a single value (a 0-d array); it needs one row per sample")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataFileError(f"{where}: {name} holds {a.dtype} values; only numbers can be used")
    if len(x) == 0:
        raise DataFileError(f"{where} has no samples")
    if len(x) != len(y):
        raise DataFileError(f"{where} has {len(x)} inputs but {len(y)} targets")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32)) if cfg.task != "classification" else None
    _refuse_non_finite(where, "inputs" if path.suffix != ".npz" else cfg.x_key, xt, x)
    if yt is not None:
        _refuse_non_finite(where, "targets" if path.suffix != ".npz" else cfg.y_key, yt, y)
        return xt, yt.reshape(len(yt), -1), "regression", 0
    labels = np.asarray(y).reshape(len(y), -1)
    if labels.shape[1] != 1:
        raise DataFileError(f"{where}: classification needs one label per sample, got targets of shape {list(y.shape)}")
    labels = labels[:, 0].astype(np.float64)
    bad = ~np.isfinite(labels) | (labels != np.round(labels))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFileError(f"{where}: class labels must be whole numbers; sample {i} has {labels[i].item()!r}")
    if (labels < 0).any():
        i = int(np.argmax(labels < 0))
        raise DataFileError(f"{where}: class labels must be 0 or more; sample {i} has {int(labels[i])}")
    top = int(labels.max())
    classes = cfg.classes or top + 1
    if top >= classes:
        raise DataFileError(f"{where}: label {top} is out of range for data.classes={classes} (labels are 0..{classes - 1})")
    return xt, torch.as_tensor(labels.astype(np.int64)), "classification", classes


def _refuse_non_finite(where: str, name: str, values: torch.Tensor, source) -> None:
    """Training on NaN/Inf fails steps later, far from the cause: name the first one here.
    ``source``: the array as read, to tell a value too large for float32 from a NaN or Inf."""
    import numpy as np

    bad = ~torch.isfinite(values)
    if bad.any():
        at = [int(i) for i in np.unravel_index(int(bad.reshape(-1).to(torch.uint8).argmax()), tuple(bad.shape))]
        position = f"sample {at[0]}" + (f", column {at[1]}" if len(at) == 2 else f", position {at[1:]}" if len(at) > 2 else "")
        first = np.asarray(source)[tuple(at)]
        what = "too large for float32" if np.isfinite(first) else str(first.item())
        raise DataFileError(f"{where}: {int(bad.sum())} NaN or infinite value(s) in {name}, the first at {position} "
                            f"({what}); clean or drop those samples")
