"""Listings made from the schemas, so that they cannot drift from the code: ``runner --help``'s
settings, ``runner layers`` and the README's tables of layer types and settings."""
from __future__ import annotations

import typing

from runner.schema import Schema, _schema_in, fields_table

HEADER = """runner: declare a model, its init and its ties in config; train it, track its parameters in MLflow,
keep its weights by name.

  runner [group=option ...] [key=value ...]     train (task=inspect: build, initialise and report only)
  runner -m key=a,b ...                         a sweep
  runner layers [TYPE]                          the layer types a model config may use, and their fields
  runner-weights list|show|diff|export          registered and checkpointed weights
"""


def setting_rows(cls: type[Schema], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type in words, default, doc) for a schema, nested sections flattened."""
    rows = []
    for key, kind, default, doc in fields_table(cls):
        info = next(i for n, i in cls.model_fields.items() if (i.alias or n) == key)
        inner = _schema_in(info.annotation)
        origin = typing.get_origin(info.annotation)
        if inner is not None and origin not in (list, dict) and default == "(section)":
            rows += setting_rows(inner, f"{prefix}{key}.")
        else:
            rows.append((prefix + key, kind, default, doc))
    return rows


def group_schemas() -> dict[str, type[Schema]]:
    from runner.config import TopConfig, schemas

    return {"(top level)": TopConfig, **schemas()}


def settings_text(width: int = 130) -> str:
    lines = []
    for group, cls in group_schemas().items():
        prefix = "" if group.startswith("(") else f"{group}."
        lines.append(f"{group}: {cls.__doc__.strip().splitlines()[0]}")
        for key, kind, default, doc in setting_rows(cls, prefix):
            lines.append(f"  {key:34} {default:>10}  {doc}"[:width])
    return "\n".join(lines)


def help_node() -> dict:
    """Hydra's ``hydra/help`` config for ``runner --help``."""
    body = settings_text().replace("${", "\\${")
    return {
        "app_name": "runner",
        "header": HEADER,
        "footer": "Hydra's own flags: runner --hydra-help. Layer types: runner layers. Errors exit with status 2.",
        "template": "${hydra.help.header}\n== Presets (group=option) ==\n$APP_CONFIG_GROUPS\n\n"
                    "== Settings (key, default, meaning); override any: train.lr=0.05 ==\n" + body +
                    "\n\n== The composed config ==\n$CONFIG\n${hydra.help.footer}\n",
    }


def layer_rows() -> list[tuple[str, str, str, list[tuple[str, str, str, str]]]]:
    """(type, aliases, doc, fields) for every node type."""
    from runner.model.layers import NODE_TYPES

    out = []
    for name, cls in NODE_TYPES.items():
        fields = [r for r in fields_table(cls) if r[0] not in ("type", "name")]
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        out.append((name, ", ".join(cls.aliases), doc, fields))
    return out


def _field_text(key: str, kind: str, default: str) -> str:
    return f"`{key}`" + ("" if default == "required" else f" = {default}")


def layers_markdown() -> str:
    """The README's table of node types."""
    lines = ["| type | what | fields (= default; the others are required) |", "| --- | --- | --- |"]
    for name, aliases, doc, fields in layer_rows():
        label = f"`{name}`" + (f" (alias `{aliases}`)" if aliases else "")
        text = ", ".join(_field_text(k, t, d) for k, t, d, _ in fields) or "-"
        lines.append(f"| {label} | {doc} | {text} |")
    return "\n".join(lines)


def print_layers(which: str | None = None) -> int:
    from rich.table import Table

    from runner.errors import did_you_mean
    from runner.model.layers import canonical_type
    from runner.tables import make_console

    rows = layer_rows()
    console = make_console()
    if which is not None:
        pick = [r for r in rows if r[0] == canonical_type(which)]
        if not pick:
            print(f"error: unknown layer type {which!r}{did_you_mean(which, [r[0] for r in rows])}; "
                  "runner layers lists them all", file=__import__("sys").stderr)
            return 2
        name, aliases, doc, fields = pick[0]
        table = Table(title=f"{name}: {doc}", title_justify="left")
        for col in ("Field", "Type", "Default", "Meaning"):
            table.add_column(col)
        for row in fields:
            table.add_row(*row)
        console.print(table)
        return 0
    table = Table(title="Layer types (runner layers TYPE for one type's fields)", title_justify="left")
    for col in ("Type", "What", "Fields"):
        table.add_column(col)
    for name, aliases, doc, fields in rows:
        table.add_row(name + (f" ({aliases})" if aliases else ""), doc,
                      ", ".join(k + ("" if d == "required" else f"={d}") for k, _, d, _ in fields))
    console.print(table)
    return 0
