"""User code named by dotted path in a config (initializers, modules, whole models).

A config that names code runs that code: treat configs from others like code. Dotted paths are
imported the way ``python -m`` would find them, so a module beside your configs (in the launch
directory) works without installing it. Whatever the code raises is reported as a config problem
that names the config path, the dotted path and the exception's message, never as a stack trace
(``HYDRA_FULL_ERROR=1`` shows the trace).
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from runner.errors import ConfigError, Problem, first_line


class LocateError(Exception):
    """A dotted path that does not name an importable object."""


def locate(dotted: str) -> Any:
    """The object at ``package.module.attr`` (attributes may nest: ``torch.nn.Conv2d``)."""
    if not isinstance(dotted, str) or not dotted or dotted.startswith(".") or dotted.endswith("."):
        raise LocateError(f"{dotted!r} is not a dotted path")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    parts = dotted.split(".")
    module = None
    for i in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError as e:
            if e.name is not None and not ".".join(parts[:i]).startswith(e.name):
                raise LocateError(f"importing {'.'.join(parts[:i])} failed: {type(e).__name__}: {first_line(e)}") from None
        except Exception as e:  # the module exists but raises on import
            raise LocateError(f"importing {'.'.join(parts[:i])} failed: {type(e).__name__}: {first_line(e)}") from None
    if module is None:
        raise LocateError(f"no module named {parts[0]!r}")
    obj = module
    for attr in parts[i:]:
        if not hasattr(obj, attr):
            raise LocateError(f"{'.'.join(parts[:i])} has no attribute {attr!r}")
        obj = getattr(obj, attr)
        i += 1
    return obj


def user_error(path: str, what: str, e: BaseException) -> ConfigError:
    """A config error for user code that raised ``e`` (Hydra's wrapper unwrapped)."""
    from hydra.errors import InstantiationException

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return ConfigError([Problem(path, f"{what} raised {type(e).__name__}: {first_line(e)}")])


def instantiate(target: str, args: dict, path: str) -> Any:
    """``target(**args)`` by Hydra's ``instantiate`` (nested ``_target_``s included), with the
    errors of user code reported at config path ``path``."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        locate(target)
    except LocateError as e:
        raise ConfigError([Problem(f"{path}._target_", f"cannot import {target!r}: {e}")]) from None
    try:
        return hydra_instantiate({"_target_": target, **args}, _convert_="all")
    except Exception as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise user_error(path, target, e) from None
