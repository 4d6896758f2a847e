"""runner: a config-driven experiment runner with a weight registry.

The Python API (imported lazily, so ``import runner`` is cheap)::

    import runner
    net = runner.build(model="d2l_nested")
    net.param("body.block-1.dense.bias"), net[0][1][1].bias
    runner.show(net)
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "build": "runner.api",
    "compose": "runner.api",
    "prepare": "runner.api",
    "show": "runner.api",
    "build_model": "runner.model",
    "Network": "runner.model",
    "summarize": "runner.model.summary",
    "apply_init": "runner.init",
    "edit_param": "runner.init",
    "load_data": "runner.data",
    "UserError": "runner.errors",
    "ConfigError": "runner.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
