"""Safe arithmetic over config values: numbers, names, + - * / // % **, and a few functions.

Two places use it:

- the ``calc`` resolver, for values computed from other values when the config is composed:
  ``hidden: ${calc:4 * ${model.vars.dim}}`` or ``std: "${calc:'0.02 / sqrt(2 * ${model.vars.n_layer})'}"``;
- init rule arguments written as ``"=<expression>"``, computed for each tensor the rule sets, with
  the tensor's own variables: ``i`` and ``n`` (the copy index of the innermost ``repeat`` or
  numbered child holding it, and how many copies there are), ``fan_in``, ``fan_out``, ``numel``,
  and the model's ``vars`` (GPT-2's depth scaling: ``std: "=0.02 / sqrt(2 * n_layer)"``).

Nothing but arithmetic runs: no attribute access, no subscripts, no other calls.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any

FUNCTIONS = {"sqrt": math.sqrt, "log": math.log, "log2": math.log2, "exp": math.exp, "abs": abs, "min": min,
             "max": max, "floor": math.floor, "ceil": math.ceil, "round": round, "int": int, "float": float}
CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class ExprError(ValueError):
    """An expression that is not plain arithmetic, or cannot be computed."""


def parse(text: str) -> ast.expr:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"cannot parse {text!r}: {e.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Call,
                             *_BINARY, *_UNARY)):
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            continue
        raise ExprError(f"{text!r}: only numbers, names, + - * / // % ** and {', '.join(FUNCTIONS)} are allowed")
    return tree.body


def names_in(text: str) -> set[str]:
    """The variable names an expression reads."""
    return {n.id for n in ast.walk(parse(text)) if isinstance(n, ast.Name) and n.id not in FUNCTIONS}


def evaluate(text: str, variables: dict[str, Any] | None = None) -> float | int:
    """The value of ``text`` with ``variables`` (and pi, e) as names."""
    env = {**CONSTANTS, **(variables or {})}

    def ev(node: ast.expr):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                known = ", ".join(sorted(k for k in env if k not in CONSTANTS)) or "none"
                raise ExprError(f"{text!r}: unknown name {node.id!r} (known: {known})")
            value = env[node.id]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ExprError(f"{text!r}: {node.id} is {value!r}, not a number")
            return value
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ExprError(f"{text!r}: exponent {right} is too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise ExprError(f"{text!r}: only {', '.join(FUNCTIONS)} can be called")
            return FUNCTIONS[node.func.id](*(ev(a) for a in node.args))
        raise ExprError(f"{text!r}: not arithmetic")

    try:
        value = ev(parse(text))
    except ExprError:
        raise
    except (ArithmeticError, ValueError, TypeError, OverflowError) as e:
        raise ExprError(f"{text!r}: {e}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"{text!r} is {value}")
    return value


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("=")


def register_resolvers() -> None:
    """Register ``${calc:...}`` with OmegaConf (once)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("calc"):
        OmegaConf.register_new_resolver("calc", lambda text: evaluate(str(text)))
