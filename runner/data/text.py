"""Character-level text for next-character language models (``data.kind: text``).

The corpus is a UTF-8 text file (``data.path``) or, by default, the docstrings of Python's own
standard library (read with ``ast`` from the interpreter's ``Lib/`` folder, so nothing is
downloaded; cached once per Python version under ``$XDG_CACHE_HOME/runner``). The vocabulary is
every character of the corpus; its last ``val_fraction`` is the validation text.

An epoch is ``steps_per_epoch`` batches of random windows (seeded by epoch, so a resumed run sees
the same ones); a sample is ``block_size`` characters and its target is the same window shifted
by one. Validation uses non-overlapping windows of the held-out text. The unigram baseline, the
loss of predicting every character by its frequency in the training text, is what a model that
learned nothing about context would score.
"""
from __future__ import annotations

import ast
import math
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from runner.data.base import Dataset
from runner.errors import UserError

MAX_VAL_WINDOWS = 256
STDLIB_CHARS = 600_000  # the default corpus: about this many characters of docstrings


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runner"


def stdlib_docstrings(limit: int = STDLIB_CHARS) -> str:
    """The docstrings of the standard library's top-level modules, in file order, up to ``limit``
    characters (cached)."""
    cached = cache_dir() / f"stdlib-docstrings-{sys.version_info[0]}.{sys.version_info[1]}-{limit}.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    size = 0
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc)
                    size += len(doc) + 2
        if size >= limit:
            break
    text = "\n\n".join(parts)[:limit]
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home: rebuild next time
    return text


@dataclass
class TextDataset(Dataset):
    ids: torch.Tensor            # the training text as token ids
    x_val: torch.Tensor
    y_val: torch.Tensor
    chars: list[str]
    block_size: int
    batch_size: int
    steps: int
    seed: int
    unigram_loss: float = 0.0
    task: str = "lm"
    source: str = ""
    num_classes: int = field(init=False)

    def __post_init__(self):
        self.num_classes = len(self.chars)

    @property
    def batches_per_epoch(self) -> int:
        return self.steps

    def _windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + torch.arange(self.block_size)
        return self.ids[idx], self.ids[idx + 1]

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        starts = torch.randint(0, len(self.ids) - self.block_size, (self.steps, self.batch_size), generator=g)
        for b in range(start, self.steps):
            x, y = self._windows(starts[b])
            yield b, x, y

    def sample(self) -> torch.Tensor:
        return self._windows(torch.arange(self.batch_size) % (len(self.ids) - self.block_size))[0]

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        return torch.tensor([index[c] for c in text if c in index], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def baselines(self) -> dict[str, float]:
        return {"val/unigram_loss": self.unigram_loss}


def load_text(cfg, seed: int) -> TextDataset:
    if cfg.path is None:
        text, source = stdlib_docstrings(cfg.max_chars or STDLIB_CHARS), "Python standard library docstrings"
    else:
        try:
            text = Path(cfg.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"data.path: {cfg.path} cannot be read as UTF-8 text: {e}") from None
        source = cfg.path
        if cfg.max_chars:
            text = text[: cfg.max_chars]
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    n_val = int(len(ids) * cfg.val_fraction)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    t = cfg.block_size
    if len(train) <= t + 1:
        raise UserError(f"data.path: {source} has {len(text)} characters; the training part needs more than "
                        f"data.block_size + 1 = {t + 1}")
    windows = min(MAX_VAL_WINDOWS, max(0, (len(val) - 1) // t))
    starts = torch.arange(windows) * t
    idx = starts[:, None] + torch.arange(t)
    x_val, y_val = (val[idx], val[idx + 1]) if windows else (val.new_zeros(0, t), val.new_zeros(0, t))
    counts = torch.bincount(train, minlength=len(chars)).double() + 1.0  # add-one: unseen characters
    logp = (counts / counts.sum()).log()
    unigram = float(-logp[y_val.reshape(-1)].mean()) if windows else math.nan
    return TextDataset(train, x_val, y_val, chars, t, cfg.batch_size, cfg.steps_per_epoch, seed, unigram,
                       source=source)
