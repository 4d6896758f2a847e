"""``runner report RUN_ID|REF``: a run's layer health and findings in the terminal.

The same table and rules as the HTML report, read back from the store: the run's metrics (mapped
back from their display names) and its ``model.json`` artifact. A REF may be an MLflow run id,
``runs:/<run id>/...``, ``models:/<name>/<version|latest>`` or ``models:/<name>@<alias>`` (the run
that registered that version).
"""
from __future__ import annotations

import argparse
import json
import sys

from runner.errors import UserError, first_line
from runner.tracking.health import BAND, ModelInfo, diagnose, layer_table
from runner.tracking.keys import internal


def run_of(ref: str, client) -> str:
    """The run id a REF names."""
    if ref.startswith("models:/"):
        from runner.checkpoint.registry import _remote

        return _remote(ref, client)[0]
    if ref.startswith("runs:/"):
        return ref[len("runs:/"):].partition("/")[0]
    return ref


def history_of(client, run_id: str):
    """(model, logging-step entries, epoch entries, skipped steps) of a run, from the store."""
    import os
    import tempfile

    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise UserError(f"no run {run_id!r} in the store ({first_line(e)})") from None
    with tempfile.TemporaryDirectory(prefix="runner-report-") as tmp:
        try:
            path = client.download_artifacts(run_id, "model.json", tmp)
        except Exception:
            raise UserError(f"run {run_id} has no model.json artifact: it was not trained by this version of the "
                            "runner") from None
        with open(os.path.join(tmp, os.path.basename(path))) as f:
            model = ModelInfo.from_dict(json.load(f))
    steps: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    skipped: list[int] = []
    for key in run.data.metrics:
        name, _ = internal(key)
        for m in client.get_metric_history(run_id, key):
            _, value = internal(key, m.value)
            if name.startswith("val/") or name in ("train/epoch_loss", "train/samples_per_s", "train/epoch"):
                epochs.setdefault(m.step, {})[name] = value
            elif name == "train/nonfinite_steps":
                skipped.append(m.step)
            else:
                steps.setdefault(m.step, {})[name] = value
    entries = [(s, steps[s]) for s in sorted(steps) if s > 0]
    return model, run, entries, sorted(epochs.items()), sorted(skipped)


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def print_report(client, ref: str) -> int:
    from rich.table import Table

    from runner.tables import make_console

    run_id = run_of(ref, client)
    model, run, entries, epochs, skipped = history_of(client, run_id)
    findings = diagnose(model, entries, skipped)
    console = make_console()
    final = ", ".join(f"{k} {v:.4g}" for k, v in (epochs[-1][1] if epochs else {}).items() if k != "train/epoch")
    console.print(f"[bold]{run.info.run_name}[/] ({run.info.status}) run {run_id}"
                  + (f", steps {entries[0][0]}–{entries[-1][0]}" if entries else "") + (f": {final}" if final else ""))
    table = Table(title="Layer health (network order)", title_justify="left")
    for col in ("Tensor", "Type", "Values", "Weight std", "Norm drift", "Grad norm",
                f"Update ratio (band {BAND[0]:g}–{BAND[1]:g})", "Dead ReLU", "Non-finite"):
        table.add_column(col, justify="left" if col in ("Tensor", "Type") else "right")
    for row in layer_table(model, entries):
        ratio = row["update_ratio_median"]
        flag = "" if ratio is None or BAND[0] <= ratio <= BAND[1] else " [red]●[/]"
        name = row["name"] + (f" [magenta](shared as {', '.join(row['aliases'])})[/]" if row["aliases"] else "")
        table.add_row(name, row["type"], f"{row['numel']:,}", _fmt(row["weight_std"]), _fmt(row["drift"]),
                      _fmt(row["grad_norm"]), _fmt(ratio) + flag, _fmt(row["dead"], 2), str(row["nonfinite"] or ""))
    console.print(table)
    if findings:
        console.print(f"[bold red]{len(findings)} finding(s)[/]")
        for f in findings:
            console.print(f"  - [bold]{f.rule}[/]: {f.message}", highlight=False)
    else:
        console.print("[bold green]no findings[/]")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="runner report", description="A run's layer health and findings.")
    ap.add_argument("ref", help="an MLflow run id, runs:/<run id>/..., or models:/<name>/<version> | @<alias>")
    ap.add_argument("--tracking-uri", help="the MLflow store (default: sqlite under ./outputs)")
    args = ap.parse_args(argv)
    from runner.tracking.config import client

    try:
        return print_report(client(args.tracking_uri), args.ref)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
