"""User-facing errors: short messages, every problem at once, no stack trace."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located by its dotted config path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UserError(Exception):
    """A mistake in the user's config, command line or files. Shown without a stack trace."""

    exit_status = 2  # the CLI's exit status; a run that ran and failed says 1


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM, so runs can end as KILLED.

    Python drops an exception raised where it cannot propagate (a ``__del__`` run by the garbage
    collector, an at-fork callback), and a library may turn it into an error of its own: the
    handler therefore also records the signal, long phases call :func:`raise_if_terminated` at
    safe points, and whatever error ends a task after a SIGTERM counts as the termination."""

    received = False  # set by the SIGTERM handler


def raise_if_terminated() -> None:
    """Raise ``Terminated`` if a SIGTERM arrived whose exception was swallowed."""
    if Terminated.received:
        raise Terminated()


class ConfigError(UserError):
    """One or more problems found in a config, reported together."""

    def __init__(self, problems: Iterable[Problem], title: str = "invalid config"):
        self.problems = list(problems)
        self.title = title
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.problems)
        head = f"{self.title} ({n} problem{'s' if n != 1 else ''}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class Problems:
    """Collects problems during a validation pass, then raises them all at once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(Problem(path, message))

    def mapping(self, cfg: Any, path: str, allowed: Iterable[str], shape: str = "") -> bool:
        """Whether ``cfg`` is a mapping (a problem if not: ``must be a mapping<shape>``); its
        unknown keys are added as problems too."""
        if not isinstance(cfg, dict):
            self.add(path, f"must be a mapping{shape}, got {cfg!r}")
            return False
        self.unknown_keys(cfg, allowed, path)
        return True

    def unknown_keys(self, cfg: dict, allowed: Iterable[str], path: str, what: str = "") -> None:
        """One problem per key of ``cfg`` not in ``allowed``, with a suggestion."""
        allowed = list(allowed)
        for key in cfg:
            if key not in allowed:
                self.add(f"{path}.{key}" if path else str(key),
                         f"unknown key{what}{did_you_mean(str(key), allowed)}; allowed: {one_of(allowed)}")

    def number(self, cfg: dict, key: str, path: str, *, integer: bool = True, zero_ok: bool = False,
               nullable: bool = False) -> None:
        """A problem unless ``cfg[key]`` (when present) is a positive number: non-negative with
        ``zero_ok``, an integer with ``integer``, or null with ``nullable``."""
        if key not in cfg or (nullable and cfg[key] is None):
            return
        v = cfg[key]
        kinds = int if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kinds) or v < 0 or (v == 0 and not zero_ok):
            self.add(f"{path}.{key}" if path else key,
                     f"must be a {'non-negative' if zero_ok else 'positive'} {'integer' if integer else 'number'}"
                     f"{' or null' if nullable else ''}, got {v!r}")

    def extend(self, other: Iterable[Problem]) -> None:
        self.items.extend(other)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, title: str = "invalid config") -> None:
        if self.items:
            raise ConfigError(self.items, title)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(sorted(choices))
