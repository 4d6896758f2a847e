"""The ``checkpoint`` group: when to write checkpoints during training, and how to resume.

A checkpoint entry holds ``weights.safetensors`` (see ``weights.py``) and ``state.pt`` (see
``state.py``), committed by ``manifest.json`` (see ``store.py``). ``train.resume`` takes:

- ``auto``: the newest committed checkpoint in this run directory's ``checkpoints/`` (start
  fresh when there is none; pair it with ``hydra.run.dir=<the old run directory>``);
- a path: a checkpoint entry, a ``checkpoints/`` folder, or a run directory;
- an MLflow run id: the checkpoints of that run's run directory.

Resuming continues the same MLflow run.
"""
from __future__ import annotations

import re
from pathlib import Path

from runner.checkpoint.config import CheckpointConfig
from runner.checkpoint.state import load_state, save_state
from runner.checkpoint.store import CheckpointStore, Entry, verify
from runner.checkpoint.weights import CheckpointError, DamagedCheckpoints, config_hash, load_into, read_weights, save_weights

WEIGHTS, STATE = "weights.safetensors", "state.pt"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class Checkpointer:
    """Writes checkpoints for the training loop."""

    def __init__(self, folder: Path, cfg, net, config_text: str, run_id: str = "", write: bool = True):
        """``write=False``: a process of a data-parallel group other than rank 0, which takes part
        in gathering a checkpoint's tensors but writes nothing."""
        cfg = CheckpointConfig.of(cfg, "checkpoint")
        self.store = CheckpointStore(folder, cfg.keep_last, cfg.keep_best, cfg.best_metric, cfg.best_mode)
        self.write = write
        self.removed = self.store.clean() if write else []
        self.every = cfg.every_n_steps
        self.net = net
        self.config_text = config_text
        self.run_id = run_id
        self.last: Entry | None = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % int(self.every) == 0

    def save(self, step: int, state: dict, metrics: dict[str, float],
             tensors: dict | None = None) -> Entry | None:
        """Write an entry; ``tensors``: the whole tensors by canonical name (default: the model's)."""
        if not self.write:
            return None
        state = {**state, "config": self.config_text, "step": step, "run_id": self.run_id}

        def write(folder: Path) -> None:
            save_weights(folder / WEIGHTS, self.net, step, self.run_id, tensors)
            save_state(folder / STATE, state)

        self.last = self.store.save(step, write, metrics)
        return self.last


def find_entry(path: Path) -> Entry:
    """A checkpoint entry from a path to an entry, a ``checkpoints/`` folder or a run directory."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return verify(path)
    damaged: list[str] = []
    for folder in (path, path / "checkpoints"):
        if folder.is_dir():
            store = CheckpointStore(folder)
            entry = store.latest()
            if entry is not None:
                return entry
            damaged += store.skipped
    if damaged:
        raise DamagedCheckpoints(f"no intact checkpoint at {path}; " + "; ".join(damaged))
    raise CheckpointError(f"no committed checkpoint at {path}")


def load_checkpoint(entry: Entry, net, config: dict | None = None) -> dict:
    """Load an entry's weights into ``net`` (checked against the model) and return its state.
    With ``config`` (the run's plain config), a resume that could not continue exactly (another
    seed, other data, another batch or accumulation) is refused; other training changes
    (more epochs, another learning rate) are allowed and said."""
    tensors, meta = read_weights(entry.path / WEIGHTS)
    if meta.get("runner.config_hash") not in (None, config_hash(net.config)):
        raise CheckpointError(f"{entry.path} was written for a different model config; "
                              "resume with the model config it was trained with")
    state = load_state(entry.path / STATE)
    if config is not None and isinstance(state.get("config"), str):
        compare_configs(state["config"], config, entry.path)
    load_into(net, tensors, meta, str(entry.path))
    return state


def compare_configs(saved_text: str, config: dict, where: Path) -> None:
    from omegaconf import OmegaConf

    from runner.tracking.run import flatten

    saved = flatten(OmegaConf.to_container(OmegaConf.create(saved_text)))
    now = flatten(config)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    exact = [k for k in changed if k == "seed" or k.startswith("data.") or k == "train.accumulate"]
    if exact:
        raise CheckpointError(f"{where} was trained with other " + ", ".join(
            f"{k}={saved.get(k, '(unset)')} (now {now.get(k, '(unset)')})" for k in exact)
            + "; a resume continues the same data order and batches, so these must match. Start a new run "
              "instead (init.warm_start can begin from these weights)")
    others = [k for k in changed if k.startswith("train.") and k not in ("train.resume", "train.progress")]
    if others:
        print("resuming with changed settings: " + ", ".join(f"{k} {saved.get(k, '(unset)')} -> {now.get(k, '(unset)')}"
                                                               for k in others))


def resolve_resume(ref: str, run_dir: Path, tracking_uri: str | None) -> Entry | None:
    """The checkpoint entry ``train.resume`` points to (None for ``auto`` with nothing to resume)."""
    if ref == "auto":
        store = CheckpointStore(run_dir / "checkpoints")
        entry = store.latest()
        for why in store.skipped:
            print(f"train.resume=auto: skipped a damaged checkpoint: {why}")
        return entry
    if RUN_ID.match(ref) and not Path(ref).exists():
        from runner.tracking.config import client as mlflow_client, default_uri, redact

        client = mlflow_client(tracking_uri)
        try:
            run = client.get_run(ref)
        except Exception:
            raise CheckpointError(f"train.resume: no MLflow run {ref} in {redact(tracking_uri or default_uri())}") from None
        folder = run.data.tags.get("runner.checkpoint_dir")
        if not folder:
            raise CheckpointError(f"train.resume: run {ref} has no checkpoint folder recorded")
        return find_entry(Path(folder))
    try:
        return find_entry(Path(ref))
    except CheckpointError as e:
        raise CheckpointError(f"train.resume: {e}") from None
