"""``runner-weights``: list, show, diff and export named weights from checkpoints and the registry.

    runner-weights list
    runner-weights show models:/d2l_mlp@best 'hidden.*' --values
    runner-weights diff models:/d2l_mlp/1 models:/d2l_mlp/2
    runner-weights export models:/d2l_mlp/latest --out weights.npz

REF: a checkpoint entry, ``checkpoints/`` folder, run directory or ``.safetensors`` file;
``runs:/<run_id>/<path>``; ``models:/<name>/<version|latest>``; ``models:/<name>@<alias>``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USER_ERROR = 2


def _load(ref: str, uri: str | None):
    from runner.checkpoint.registry import read_ref
    from runner.checkpoint.weights import file_tie_map
    from runner.tracking.config import client as mlflow_client

    client = mlflow_client(uri) if ref.startswith(("runs:/", "models:/")) else None
    tensors, meta, description = read_ref(ref, uri, client)
    return tensors, meta, file_tie_map(meta) or {}, description


def _kind(name: str, meta: dict) -> str:
    from runner.checkpoint.weights import buffer_names

    return "buffer" if name in buffer_names(meta) else "param"


def cmd_list(args) -> None:
    from rich.table import Table

    from runner.tables import make_console

    from runner.tracking.config import client as mlflow_client

    client = mlflow_client(args.tracking_uri)
    table = Table(title="Registered weights", title_justify="left")
    for col in ("Model", "Version", "Aliases", "Run", "Step", "Metric", "Tie groups", "REF"):
        table.add_column(col)
    models = client.search_registered_models()
    for m in sorted(models, key=lambda m: m.name):
        aliases: dict[str, list[str]] = {}
        for alias, version in (m.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for v in sorted(client.search_model_versions(f"name='{m.name}'"), key=lambda v: int(v.version)):
            metric = f"{v.tags.get('metric')}={float(v.tags['metric_value']):.4g}" if v.tags.get("metric_value") else ""
            table.add_row(m.name, str(v.version), ", ".join(aliases.get(str(v.version), [])), v.run_id or "",
                          v.tags.get("step", ""), metric, v.tags.get("tie_groups", ""), f"models:/{m.name}/{v.version}")
    console = make_console()
    if not models:
        console.print("no registered weights yet (train a model: `runner`)")
        return
    console.print(table)


def _stats(t) -> tuple[float, float, float, float, float]:
    f = t.detach().float().reshape(-1)
    std = f.std().item() if f.numel() > 1 else 0.0
    return f.mean().item(), std, f.min().item(), f.max().item(), f.norm().item()


def cmd_show(args) -> None:
    from rich.table import Table

    from runner import names as N
    from runner.errors import UserError
    from runner.tables import make_console, shape_str

    tensors, meta, ties, desc = _load(args.ref, args.tracking_uri)
    names = N.select(tensors, args.pattern) if args.pattern else list(tensors)
    if not names:
        raise UserError(f"no parameter in {args.ref} matches {args.pattern!r}")
    console = make_console()
    table = Table(title=f"{desc}  (step {meta.get('runner.step', '?')}, run {meta.get('runner.run_id') or '-'})",
                  title_justify="left")
    for col in ("Name", "Kind", "Shape", "Dtype", "Shared as", "Mean", "Std", "Min", "Max", "L2"):
        table.add_column(col, justify="right" if col in {"Mean", "Std", "Min", "Max", "L2"} else "left")
    for n in names:
        t = tensors[n]
        shared = ties.get(n, {})
        alias = ", ".join([*shared.get("aliases", []), *(f"{a} (T)" for a in shared.get("transposed", []))])
        table.add_row(n, _kind(n, meta), shape_str(t.shape), str(t.dtype).replace("torch.", ""), alias,
                      *(f"{v:.4g}" for v in _stats(t)))
    console.print(table)
    if args.values:
        for n in names:
            console.print(f"[bold]{n}[/]")
            console.print(str(tensors[n]).replace("tensor(", "", 1).rstrip(")"), markup=False, highlight=False)


def cmd_diff(args) -> None:
    from rich.table import Table

    from runner import names as N
    from runner.tables import make_console

    a, _, _, desc_a = _load(args.a, args.tracking_uri)
    b, _, _, desc_b = _load(args.b, args.tracking_uri)
    names = [n for n in a if n in b]
    if args.pattern:
        names = N.select(names, args.pattern)
    rows, notes = [], []
    for n in names:
        if a[n].shape != b[n].shape:
            notes.append(f"{n}: shape {list(a[n].shape)} vs {list(b[n].shape)}")
            continue
        x, y = a[n].detach().float(), b[n].detach().float()
        d = (y - x)
        l2 = d.norm().item()
        rows.append((n, l2, l2 / max(x.norm().item(), 1e-12), d.abs().max().item() if d.numel() else 0.0))
    rows.sort(key=lambda r: r[2], reverse=True)
    table = Table(title=f"{desc_a}  ->  {desc_b}", title_justify="left")
    for col in ("Parameter", "L2 of difference", "Relative change", "Max abs"):
        table.add_column(col, justify="left" if col == "Parameter" else "right")
    for n, l2, rel, mx in rows:
        table.add_row(n, f"{l2:.4g}", f"{rel:.4g}", f"{mx:.4g}")
    console = make_console()
    console.print(table)
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    for n in only_a:
        notes.append(f"{n}: only in {args.a}")
    for n in only_b:
        notes.append(f"{n}: only in {args.b}")
    for note in notes:
        console.print(note, markup=False)


def cmd_export(args) -> None:
    from runner.checkpoint.weights import check_finite
    from runner.errors import UserError

    tensors, meta, ties, desc = _load(args.ref, args.tracking_uri)
    if not args.allow_nonfinite:
        check_finite(tensors, f"{desc} (export anyway with --allow-nonfinite)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=meta)
    elif out.suffix == ".npz":
        import numpy as np

        arrays = {k: v.detach().cpu().numpy() for k, v in tensors.items()}
        from runner.checkpoint.weights import buffer_names

        np.savez(out, **arrays, __tie_map__=np.array(json.dumps(ties)),
                 __buffers__=np.array(json.dumps(buffer_names(meta))))
    else:
        raise UserError(f"--out must end in .safetensors or .npz, got {out.name}")
    print(f"exported {len(tensors)} tensors from {desc} to {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="runner-weights", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", help="MLflow store (default: sqlite under ./outputs)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="registered models and versions").set_defaults(fn=cmd_list)
    s = sub.add_parser("show", help="names, shapes, dtypes, tie groups and stats of a REF")
    s.add_argument("ref")
    s.add_argument("pattern", nargs="?")
    s.add_argument("--values", action="store_true", help="print the values too")
    s.set_defaults(fn=cmd_show)
    d = sub.add_parser("diff", help="per-parameter change from REF A to REF B, largest first")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("pattern", nargs="?")
    d.set_defaults(fn=cmd_diff)
    e = sub.add_parser("export", help="write a REF's weights to .safetensors or .npz")
    e.add_argument("ref")
    e.add_argument("--out", required=True)
    e.add_argument("--allow-nonfinite", action="store_true", help="export weights that hold NaN or Inf")
    e.set_defaults(fn=cmd_export)
    args = ap.parse_args(argv)
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from runner.errors import UserError, first_line
    from runner.tracking.config import check_store, default_uri, redact

    try:
        if args.cmd == "list" or any(str(getattr(args, k, "")).startswith(("runs:/", "models:/"))
                                     for k in ("ref", "a", "b")):
            check_store(args.tracking_uri or default_uri())
        args.fn(args)
    except UserError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:  # the store: unreachable, or refusing
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: the store at {redact(args.tracking_uri or default_uri())}: {type(err).__name__}: "
              f"{redact(first_line(err))}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
