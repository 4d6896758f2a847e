"""Named weights in safetensors: one tensor per tie group, the tie map in the metadata.

Keys are canonical dotted names of parameters and of persistent buffers (batch-norm running
statistics: state a resumed run needs bitwise). Metadata (strings only, as safetensors requires):
``runner.format``, ``runner.tie_map`` (JSON), ``runner.buffers`` (JSON list of the keys that are
buffers), ``runner.config_hash``, ``runner.step``, ``runner.run_id``, ``runner.versions`` (JSON). Loading never unpickles anything: safetensors is a
JSON header plus raw bytes. Every check that can fail is made before any value is copied, and
all problems are reported together.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from runner.errors import UserError, first_line

FORMAT = "1"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, corrupted, unsafe or not matching the model."""


class DamagedCheckpoints(CheckpointError):
    """Checkpoint entries are there, but none of them is intact (the message says why)."""


def config_hash(model_cfg: dict) -> str:
    return hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    import safetensors

    from runner import __version__

    return {"runner": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__}


def save_weights(path: Path, net, step: int = 0, run_id: str = "", tensors: dict | None = None) -> None:
    """Write ``net``'s distinct tensors (canonical names) and its tie map to ``path``; ``tensors``
    gives the values when they are not the model's own (gathered from shards)."""
    from safetensors.torch import save_file

    from runner.model.ties import tie_map

    source = tensors if tensors is not None else net.tensors()
    tensors = {name: p.detach().cpu().contiguous() for name, p in source.items()}
    meta = {
        "runner.format": FORMAT,
        "runner.tie_map": json.dumps(tie_map(net), sort_keys=True),
        "runner.buffers": json.dumps(list(net.buffers_by_name())),
        "runner.config_hash": config_hash(net.config),
        "runner.step": str(step),
        "runner.run_id": run_id or "",
        "runner.versions": json.dumps(versions()),
    }
    save_file(tensors, str(path), metadata=meta)


def _read(path: Path, what):
    """``what(f)`` on the open safetensors file; anything that is not one is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return what(f)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(e)}); "
                              "it may be truncated, corrupted or in another format") from None


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    return _read(path, lambda f: ({k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}))


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata, without reading its tensors."""
    return _read(path, lambda f: f.metadata() or {})


def file_tie_map(meta: dict[str, str]) -> dict[str, Any] | None:
    raw = meta.get("runner.tie_map")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError("the checkpoint's tie map is not valid JSON") from None


def buffer_names(meta: dict[str, str]) -> list[str]:
    try:
        return list(json.loads(meta.get("runner.buffers", "[]")))
    except (json.JSONDecodeError, TypeError):
        raise CheckpointError("the checkpoint's buffer list is not valid JSON") from None


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{where}: non-finite values (NaN/Inf) in {', '.join(bad[:10])}"
                              + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))


def load_into(net, tensors: dict[str, torch.Tensor], meta: dict[str, str], where: str = "checkpoint") -> None:
    """Copy a full set of weights into ``net`` (ties kept), after checking all of it."""
    from runner.model.ties import tie_map

    problems: list[str] = []
    ftm = file_tie_map(meta)
    model_tm = tie_map(net)
    if ftm is not None and ftm != model_tm:
        problems.append(f"its tie map {json.dumps(ftm, sort_keys=True)} contradicts the model's "
                        f"{json.dumps(model_tm, sort_keys=True)}")
    aliases = {**net.param_aliases(), **net.buffer_aliases()}
    params = net.tensors()
    canonical_values: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        canonical = aliases.get(key)
        if canonical is None:
            problems.append(f"has {key!r}, which the model does not have")
            continue
        if canonical in canonical_values:
            if not torch.equal(canonical_values[canonical], t):
                problems.append(f"{key!r} and the tensor it is tied to ({canonical!r}) hold different values")
            continue
        canonical_values[canonical] = t
    for name, p in params.items():
        t = canonical_values.get(name)
        if t is None:
            problems.append(f"lacks {name!r}")
        elif tuple(t.shape) != tuple(p.shape):
            problems.append(f"{name!r} has shape {list(t.shape)}, the model {list(p.shape)}")
        elif t.dtype != p.dtype:
            problems.append(f"{name!r} is {t.dtype}, the model {p.dtype}")
    if problems:
        raise CheckpointError(f"{where} does not fit the model:\n" + "\n".join(f"  - {m}" for m in problems))
    check_finite(canonical_values, where)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(canonical_values[name])
