"""Dotted names and pattern selection: the one place that matches parameter and module names.

Patterns are shell-style globs (``fnmatch``) over full dotted names: ``*`` matches any run of
characters, dots included, so ``body.*.weight`` matches ``body.block-0.dense.weight``.
A pattern without glob characters must equal the name.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

GLOB_CHARS = set("*?[")


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def select(names: Iterable[str], patterns: str | Iterable[str]) -> list[str]:
    """Names matching any of the patterns, in the order given by ``names``."""
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return [n for n in names if any(matches(n, p) for p in pats)]


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def parent(name: str) -> str:
    return name.rpartition(".")[0]


def leaf(name: str) -> str:
    return name.rpartition(".")[2]
