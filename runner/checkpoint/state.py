"""The training state beside the weights: everything exact resume needs, loadable with
``torch.load(weights_only=True)`` (tensors and plain Python values only, no pickled objects)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.checkpoint.weights import CheckpointError
from runner.errors import first_line


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }


def set_rng_state(s: dict[str, Any], rank: int = 0, world: int = 1) -> None:
    """Restore the RNG states saved by :func:`rng_state`; a data-parallel checkpoint holds one per
    rank (``{"ranks": [...]}``). Other ranks of a group resumed from a one-process checkpoint
    keep their seeded streams."""
    if "ranks" in s:
        if len(s["ranks"]) != world:
            import warnings

            warnings.warn(f"the checkpoint was written by {len(s['ranks'])} processes, this run has {world}: "
                          "random streams (dropout) restart from the seed", stacklevel=2)
            return
        s = s["ranks"][rank]
    elif rank != 0:
        return
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def save_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, str(path))


def load_state(path: Path) -> dict[str, Any]:
    """Load a state file without running code: anything but tensors and plain values is refused."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no training state at {path}") from None
    except Exception as e:  # UnpicklingError for unsafe payloads, RuntimeError for truncated files
        raise CheckpointError(f"{path} was refused: it is not a plain training-state file ({first_line(e)})") from None
