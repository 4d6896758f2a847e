"""Typed config schemas: each config section and each layer type is one class that holds its
fields, their types, defaults and docs, and nothing else holds them.

A schema is a pydantic model in strict mode (no silent coercion: ``"3"`` is not an integer and
``1`` is not ``true``) that forbids unknown keys. :meth:`Schema.parse` turns pydantic's errors
into the runner's one-line problems: the dotted config path, what the value must be, what it was,
and a did-you-mean for unknown keys and values, every problem at once. Checks that involve several
fields go in :meth:`Schema.problems`.

Field types carry their own wording through an :class:`Expect` marker, so that a bad value reads
``must be a positive integer, got 0`` wherever such a field is used.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, ClassVar, Iterable, Literal, Union

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Strict, ValidationError

from runner.errors import ConfigError, Problem, did_you_mean, one_of


class Expect:
    """What a field's value must be, in words (``"a positive integer"``), for error messages."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Expect({self.text!r})"


class Noun:
    """What the values of a choice field are called (``"activation"``), for error messages:
    ``unknown activation 'relux' (did you mean 'relu'?)``."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


# --- field types -------------------------------------------------------------------------------

PosInt = Annotated[int, Strict(), at.Gt(0), Expect("a positive integer")]
NonNegInt = Annotated[int, Strict(), at.Ge(0), Expect("a non-negative integer")]
Int = Annotated[int, Strict(), Expect("an integer")]
Seed = Annotated[int, Strict(), at.Ge(0), at.Le(2**63 - 1), Expect("a non-negative integer below 2**63")]
PosFloat = Annotated[float, at.Gt(0), Expect("a positive number")]
NonNegFloat = Annotated[float, at.Ge(0), Expect("a non-negative number")]
Float = Annotated[float, Expect("a finite number")]
Prob = Annotated[float, at.Ge(0), at.Lt(1), Expect("a probability in [0, 1)")]
Fraction = Annotated[float, at.Ge(0), at.Lt(1), Expect("a number in [0, 1)")]
Text = Annotated[str, at.MinLen(1), Expect("a non-empty string")]
Name = Annotated[str, at.MinLen(1), Expect("a name of letters, digits, _ and -")]
IntList = Annotated[list[Annotated[int, Strict()]], Expect("a list of integers")]
Globs = Annotated[Union[str, list[str]], Expect("a string or a list of strings")]


_NAME = __import__("re").compile(r"^[\w-]+$")


def check_name(v: str) -> str:
    """A node's name: letters, digits, ``_`` and ``-`` (it becomes part of dotted tensor names and
    of MLflow metric keys, which allow little else)."""
    if not _NAME.match(v):
        raise ValueError(f"must be a name of letters, digits, _ and -, got {v!r}")
    return v


class Schema(BaseModel):
    """Base of every config schema: strict, closed, finite floats, attribute access."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True,
                              validate_default=False)
    #: What this section is, for listings (the class docstring's first line when empty).
    doc: ClassVar[str] = ""

    def problems(self) -> Iterable[tuple[str, str]]:
        """Checks across fields, as (field, message); the field may be "" for the whole section."""
        return ()

    @classmethod
    def parse(cls, data: Any, path: str) -> tuple[Any, list[Problem]]:
        """(instance or None, problems) for ``data`` at config path ``path``: type errors and the
        cross-field :meth:`problems` of this schema and of every nested one, all at once."""
        if isinstance(data, cls):
            return data, []
        if not isinstance(data, dict):
            return None, [Problem(path, f"must be a mapping, got {data!r}")]
        try:
            obj = cls.model_validate(data)
        except ValidationError as e:
            # the nested sections that are valid on their own still get their own checks
            return None, translate(e, cls, data, path) + _nested_problems(cls, data, path)
        problems = all_problems(obj, path)
        return (None if problems else obj), problems

    @classmethod
    def of(cls, data: Any, path: str = ""):
        """An instance from ``data`` (or ``data`` itself), or ConfigError listing every problem."""
        obj, problems = cls.parse(data if data is not None else {}, path)
        if problems:
            raise ConfigError(problems)
        return obj

    def plain(self) -> dict:
        """The section as a plain dict with every default filled in, as keys are written in configs."""
        return self.model_dump(mode="python", by_alias=True)

    def node(self):
        """:meth:`plain` as an OmegaConf node for Hydra's ConfigStore. Free-form mappings (such
        as ``optimizer_args``) are left open, so ``train.optimizer_args={momentum: 0.9}`` and
        ``train.optimizer_args.momentum=0.9`` add keys the way users expect; every other key
        stays closed and a typo is an error."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(self.plain())
        _open_free_mappings(type(self), cfg)
        return cfg


def _open_free_mappings(cls: type[Schema], cfg) -> None:
    from omegaconf import DictConfig, OmegaConf

    for name, info in cls.model_fields.items():
        key = info.alias or name
        sub = cfg.get(key) if isinstance(cfg, DictConfig) else None
        if not isinstance(sub, DictConfig):
            continue
        inner = _schema_in(info.annotation)
        if inner is not None:
            _open_free_mappings(inner, sub)
        elif typing.get_origin(_strip(info.annotation)) is dict:
            OmegaConf.set_struct(sub, False)


def _strip(annotation):
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation



def all_problems(obj: "Schema", path: str) -> list[Problem]:
    """``obj.problems()`` and those of every schema nested in it."""
    out = [Problem(join_path(path, f), m) for f, m in obj.problems()]
    for name, info in type(obj).model_fields.items():
        key, value = info.alias or name, getattr(obj, name)
        items = (value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list)
                 else [(None, value)])
        for k, v in items:
            if isinstance(v, Schema):
                out += all_problems(v, join_path(join_path(path, key), k))
    return out


def _nested_problems(cls: type["Schema"], data: dict, path: str) -> list[Problem]:
    out = []
    for name, info in cls.model_fields.items():
        key = info.alias or name
        inner = _schema_in(info.annotation)
        if inner is None or key not in data:
            continue
        value = data[key]
        kind = _container(info.annotation)
        items = (value.items() if kind == "dict" and isinstance(value, dict) else
                 enumerate(value) if kind == "list" and isinstance(value, list) else
                 [(None, value)] if kind is None else [])
        for k, v in items:
            if isinstance(v, dict):
                try:
                    obj = inner.model_validate(v)
                except ValidationError:
                    out += _nested_problems(inner, v, join_path(join_path(path, key), k))
                else:
                    out += all_problems(obj, join_path(join_path(path, key), k))
    return out


def join_path(path: str, key: Any) -> str:
    if key == "" or key is None:
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


# --- error translation ---------------------------------------------------------------------------

def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None was allowed)."""
    if typing.get_origin(tp) is Annotated:
        inner, nullable = _strip_optional(typing.get_args(tp)[0])
        return (tp if not nullable else Annotated[(inner, *typing.get_args(tp)[1:])]), nullable
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), nullable
    return tp, False


def _metadata(tp: Any) -> list:
    return list(typing.get_args(tp)[1:]) if typing.get_origin(tp) is Annotated else []


def _bare(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def describe(tp: Any, metadata: Iterable = ()) -> str:
    """What a value of type ``tp`` must be, in words."""
    for m in [*metadata, *_metadata(tp)]:
        if isinstance(m, Expect):
            return m.text
    inner, nullable = _strip_optional(tp)
    for m in _metadata(inner):
        if isinstance(m, Expect):
            return m.text + (" or null" if nullable else "")
    base = _bare(inner)
    origin = typing.get_origin(base)
    if origin is Literal:
        text = "one of " + ", ".join(str(a) for a in typing.get_args(base))
    elif base is bool:
        text = "true or false"
    elif base is int:
        text = "an integer"
    elif base is float:
        text = "a number"
    elif base is str:
        text = "a string"
    elif origin is list or base is list:
        text = "a list"
    elif origin is dict or base is dict:
        text = "a mapping"
    elif isinstance(base, type) and issubclass(base, Schema):
        text = "a mapping"
    else:
        text = "a valid value"
    return text + (" or null" if nullable else "")


def _field_of(cls: type[Schema], key: str):
    for name, info in cls.model_fields.items():
        if key in (name, info.alias):
            return name, info
    return None, None


def _schema_in(tp: Any) -> type[Schema] | None:
    """The schema class a field holds directly, in a list, in a dict or as an optional."""
    inner, _ = _strip_optional(tp)
    base = _bare(inner)
    if isinstance(base, type) and issubclass(base, Schema):
        return base
    if typing.get_origin(base) in (list, dict):
        args = typing.get_args(base)
        return _schema_in(args[-1]) if args else None
    return None


def _value_at(data: Any, loc: tuple) -> Any:
    for key in loc:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def field_names(cls: type[Schema]) -> list[str]:
    return [info.alias or name for name, info in cls.model_fields.items()]


def _list_element(tp: Any) -> Any:
    """The item type of a plain ``list[...]`` field, else None."""
    base = _bare(tp)
    if typing.get_origin(base) is list and typing.get_args(base):
        return typing.get_args(base)[0]
    return None


def _container(tp: Any) -> str | None:
    """'list' or 'dict' when the field holds its schema in a list or dict, else None."""
    inner, _ = _strip_optional(tp)
    origin = typing.get_origin(_bare(inner))
    return "list" if origin is list else "dict" if origin is dict else None


def translate(e: ValidationError, cls: type[Schema], data: Any, path: str) -> list[Problem]:
    """Pydantic's errors as the runner's problems: one per offending field, in words."""
    out: dict[str, Problem] = {}
    for err in e.errors():
        loc = list(err["loc"])
        # walk the location through nested schemas, to the innermost field that has a type
        owner, info, data_loc, i = cls, None, [], 0
        while i < len(loc):
            key = loc[i]
            name, info = _field_of(owner, key) if isinstance(key, str) else (None, None)
            if info is None:
                if err["type"] == "extra_forbidden":
                    data_loc.append(key)
                break
            data_loc.append(key)
            i += 1
            inner = _schema_in(info.annotation)
            if inner is None or i >= len(loc):
                break
            if _container(info.annotation) is not None:  # step over the list index or dict key
                data_loc.append(loc[i])
                i += 1
                if i >= len(loc):
                    break
            if not isinstance(loc[i], str) or _field_of(inner, loc[i])[0] is None:
                if err["type"] == "extra_forbidden":
                    owner, info = inner, None
                    data_loc.append(loc[i])
                break
            owner = inner
        where = path
        for key in data_loc:
            where = join_path(where, key)
        if where in out:
            continue
        value = _value_at(data, data_loc)
        if err["type"] == "extra_forbidden":
            key = data_loc[-1] if data_loc else loc[-1]
            allowed = field_names(owner)
            kind = f" for {owner.type_label()!r}" if hasattr(owner, "type_label") else ""
            out[where] = Problem(where, f"unknown key{kind}{did_you_mean(str(key), allowed)}; allowed: {one_of(allowed)}")
        elif err["type"] == "missing":
            desc = info.description if info is not None and info.description else ""
            out[where] = Problem(where, "missing required value" + (f" ({desc})" if desc else ""))
        elif err["type"] in ("value_error", "assertion_error"):
            msg = str(err.get("ctx", {}).get("error") or err["msg"])
            out[where] = Problem(where, msg.removeprefix("Value error, ").removeprefix("Assertion failed, "))
        elif info is not None:
            tp, nullable = _strip_optional(info.annotation)
            element = _list_element(tp)
            if element is not None and err["type"] == "literal_error":  # a bad item of a list of choices
                tp, nullable, value = element, False, err["input"]
            lit = _bare(tp)
            if typing.get_origin(lit) is Literal and not any(isinstance(m, Expect) for m in _metadata(tp)):
                choices = [str(a) for a in typing.get_args(lit)]
                noun = next((m.text for m in [*_metadata(tp), *info.metadata] if isinstance(m, Noun)), "value")
                out[where] = Problem(where, f"unknown {noun} {value!r}{did_you_mean(str(value), choices)}; choose one of "
                                     + ", ".join(choices) + (" or null" if nullable else ""))
            else:
                got = value
                if isinstance(got, float) and not math.isfinite(got):
                    got = str(got)
                out[where] = Problem(where, f"must be {describe(info.annotation, info.metadata)}, got {got!r}")
        else:
            out[where] = Problem(where, err["msg"])
    return list(out.values())


def fields_table(cls: type[Schema]) -> list[tuple[str, str, str, str]]:
    """(key, type in words, default, doc) for each field of a schema, for listings."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in cls.model_fields.items():
        key = info.alias or name
        if info.exclude:
            continue
        default = "required" if info.default is PydanticUndefined and info.default_factory is None else (
            _show(info.default_factory()) if info.default_factory is not None else _show(info.default))
        rows.append((key, describe(info.annotation, info.metadata), default, info.description or ""))
    return rows


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, BaseModel):
        return "(section)"
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return str(v)
