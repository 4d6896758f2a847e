"""Rich tables for what ``task=inspect`` and the API show: summary, parameters, init report, values."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from runner import names as N
from runner.errors import UserError, did_you_mean
from runner.model.summary import Summary, summarize


def make_console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze names into 80 columns
        console = Console(width=200)
    return console


def shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def summary_table(s: Summary) -> Table:
    t = Table(title=f"Model: {s.model}", title_justify="left")
    t.add_column("Layer (name)")
    t.add_column("Type")
    t.add_column("Output shape")
    t.add_column("Params", justify="right")
    for r in s.rows:
        name = "  " * r.depth + (N.leaf(r.name) or "(root)")
        kind = r.type
        if r.shared:
            kind += f" [yellow](shares {', '.join(r.shared)})[/]"
        if r.is_block:
            own = f"{r.params:,} " if r.params else ""
            t.add_row(f"[bold]{name}[/]", kind, shape_str(r.out_shape), f"{own}[dim]({r.subtotal:,})[/]")
        else:
            params = f"{r.params:,}" + (f" [dim]({r.buffers:,} buffer)[/]" if r.buffers else "")
            t.add_row(name, kind, shape_str(r.out_shape), params)
    return t


def summary_footer(s: Summary) -> str:
    buffers = f" (buffers: {s.buffers:,})" if s.buffers else ""
    return (f"Total params: {s.total:,}\nTrainable params: {s.trainable:,}\n"
            f"Non-trainable params: {s.non_trainable:,}{buffers}\n"
            "[dim](subtotals of blocks are in parentheses; the other counts add up to the total)[/]")


def params_table(net, init_report=None) -> Table:
    entries = init_report.by_name() if init_report else {}
    t = Table(title="Parameters", title_justify="left")
    for col in ("Name", "Shape", "Dtype", "Trainable"):
        t.add_column(col)
    if init_report:
        t.add_column("Init (rule)")
    t.add_column("Shared as")
    params = net.params()
    for name, p in net.tensors().items():
        trainable = ("yes" if p.requires_grad else "no") if name in params else "no (buffer)"
        row = [name, shape_str(p.shape), str(p.dtype).replace("torch.", ""), trainable]
        if init_report:
            e = entries.get(name)
            row.append(f"{e.init} ({e.rule})" if e else "")
        row.append(", ".join(aliases_of(net, name)))
        t.add_row(*row)
    return t


def aliases_of(net, name: str) -> list[str]:
    out = [a for a, c in {**net.param_aliases(), **net.buffer_aliases()}.items() if c == name and a != name]
    out += [f"{a} (transposed)" for a, c in getattr(net, "transposed_aliases", {}).items() if c == name]
    return out


def ties_table(net) -> Table | None:
    from runner.model.ties import tie_map

    groups = tie_map(net)
    if not groups:
        return None
    t = Table(title="Tie groups (one stored tensor each)", title_justify="left")
    for col in ("Canonical", "Aliases", "Transposed aliases", "Shape"):
        t.add_column(col)
    params = net.params()
    for canonical, g in groups.items():
        t.add_row(canonical, ", ".join(g["aliases"]), ", ".join(g["transposed"]), shape_str(params[canonical].shape))
    return t


def init_table(report) -> Table:
    t = Table(title=f"Init report (seed {report.seed})", title_justify="left")
    warm = any(e.source != "init" for e in report.entries)
    cols = ["Parameter", "Rule", "Initializer", "Args", *(["Loaded from"] if warm else []), "Edits",
            "Mean", "Std", "Min", "Max"]
    for col in cols:
        t.add_column(col, justify="right" if col in {"Mean", "Std", "Min", "Max"} else "left")
    for e in report.entries:
        args = ", ".join(f"{k}={v}" for k, v in e.args.items())
        loaded = [e.source if e.source != "init" else ""] if warm else []
        t.add_row(e.name, e.rule, e.init, args, *loaded, "; ".join(e.edits),
                  f"{e.mean:.4g}", f"{e.std:.4g}", f"{e.min:.4g}", f"{e.max:.4g}")
    return t


def print_values(net, pattern: str, console: Console) -> int:
    table = {**dict(net.named_parameters(remove_duplicate=False)), **dict(net._named_buffers())}
    chosen = N.select(table, pattern)
    with torch.no_grad():
        for name in chosen:
            p = table[name]
            console.print(f"[bold]{name}[/] {shape_str(p.shape)} {str(p.dtype).replace('torch.', '')}")
            console.print(str(p.detach().cpu()).replace("tensor(", "", 1).rstrip(")"), markup=False, highlight=False)
    return len(chosen)


def print_inspection(net, init_report=None, values: str | None = None, console: Any = None) -> None:
    if values:
        names = [*dict(net.named_parameters(remove_duplicate=False)), *dict(net._named_buffers())]
        if not N.select(names, values):
            raise UserError(f"inspect.show: no parameter matches {values!r}{did_you_mean(values, names)}")
    console = console or make_console()
    s = summarize(net)
    console.print(summary_table(s))
    console.print(summary_footer(s))
    console.print(params_table(net, init_report))
    ties = ties_table(net)
    if ties is not None:
        console.print(ties)
    if init_report is not None:
        console.print(init_table(init_report))
    if values:
        print_values(net, values, console)


def run_directory() -> Path:
    """The Hydra run (or job) directory, or the current directory outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except ImportError:
        pass
    return Path.cwd()


def write_reports(prepared, out: Path) -> None:
    """summary.txt (summary + parameters), init_report.json, tie_map.json, model.json (the model's
    layers and tensors in network order, for reports), architecture.svg and config.yaml in ``out``."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from runner.model.ties import tie_map

    out.mkdir(parents=True, exist_ok=True)
    s = summarize(prepared.net)
    with open(out / "summary.txt", "w") as f:
        console = Console(file=f, width=200, color_system=None)
        console.print(summary_table(s))
        console.print(summary_footer(s))
        console.print(params_table(prepared.net, prepared.init_report))
    (out / "init_report.json").write_text(json.dumps(prepared.init_report.to_dict(), indent=1))
    (out / "tie_map.json").write_text(json.dumps(tie_map(prepared.net), indent=1))
    from runner.model.picture import architecture_svg
    from runner.tracking.health import ModelInfo

    model = ModelInfo.of(prepared.net)
    (out / "model.json").write_text(json.dumps(model.to_dict(), indent=1))
    (out / "architecture.svg").write_text(architecture_svg(model, f"{s.model}: {s.total:,} parameters"))
    from runner.tracking.config import redact

    (out / "config.yaml").write_text(redact(OmegaConf.to_yaml(OmegaConf.create(prepared.config.plain()))))
