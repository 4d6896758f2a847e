"""A picture of a model: its layers top to bottom in network order, nested blocks indented, each
with its type, output shape and parameter count, and the tie groups drawn as arcs joining the
layers that share a tensor. SVG, written by ``task=inspect`` as ``architecture.svg`` and shown in
the run report."""
from __future__ import annotations

import html

COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def architecture_svg(model, title: str = "") -> str:
    """``model``: a ``runner.tracking.health.ModelInfo`` (or its dict)."""
    layers = model.layers if hasattr(model, "layers") else model["layers"]
    ties = model.ties if hasattr(model, "ties") else model.get("ties", {})
    row_h, indent, left, width = 30, 22, 20, 820
    top = 44 if title else 12
    height = top + row_h * len(layers) + 20
    index = {l["name"]: i for i, l in enumerate(layers)}
    out = [f'<svg class="architecture" xmlns="http://www.w3.org/2000/svg" width="{width + 220}" height="{height}" '
           f'viewBox="0 0 {width + 220} {height}" role="img" aria-label="model architecture">']
    if title:
        out.append(f'<text x="{left}" y="24" font-size="16" font-weight="bold">{_e(title)}</text>')
    # tie groups: every layer holding (or reusing) a tensor of the group
    groups: list[tuple[str, list[int]]] = []
    owner = lambda name: name.rpartition(".")[0]  # noqa: E731
    for canonical, g in ties.items():
        rows = sorted({index[o] for o in [owner(canonical), *map(owner, g["aliases"] + g["transposed"])] if o in index})
        if len(rows) > 1:
            groups.append((canonical, rows))
    for l in layers:
        if l.get("reuse_of") and l["name"] in index and l["reuse_of"] in index:
            groups.append((l["reuse_of"], sorted({index[l["reuse_of"]], index[l["name"]]})))
    colour_of = {}
    for k, (canonical, rows) in enumerate(groups):
        for r in rows:
            colour_of.setdefault(r, COLOURS[k % len(COLOURS)])
    for i, l in enumerate(layers):
        y = top + i * row_h
        x = left + indent * l["depth"]
        block = l.get("block")
        fill = "#f4f6fb" if block else "#ffffff"
        stroke = colour_of.get(i, "#556")
        out.append(f'<g class="layer" data-layer="{_e(l["name"])}">'
                   f'<rect x="{x}" y="{y}" width="{width - x}" height="{row_h - 6}" rx="4" fill="{fill}" '
                   f'stroke="{stroke}" stroke-width="{2.5 if i in colour_of else 1}"/>')
        params = (f'({l["subtotal"]:,})' if block else f'{l["params"]:,}') + " params"
        shape = "[" + ", ".join(str(d) for d in l["shape"]) + "]"
        label = l["name"].rpartition(".")[2]
        out.append(f'<text x="{x + 8}" y="{y + 17}" font-size="13" font-weight="{"bold" if block else "normal"}">'
                   f'{_e(label)}</text><text x="{x + 170}" y="{y + 17}" font-size="12" fill="#444">{_e(l["type"])}'
                   f'</text><text x="{width - 250}" y="{y + 17}" font-size="12" fill="#444">{_e(shape)}</text>'
                   f'<text x="{width - 10}" y="{y + 17}" font-size="12" text-anchor="end">{_e(params)}</text></g>')
    for k, (canonical, rows) in enumerate(groups):
        colour = COLOURS[k % len(COLOURS)]
        x = width + 16 + 14 * (k % 10)
        ys = [top + r * row_h + (row_h - 6) / 2 for r in rows]
        out.append(f'<g class="tie" data-tie="{_e(canonical)}">')
        for yy in ys:
            out.append(f'<line x1="{width}" x2="{x}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<line x1="{x}" x2="{x}" y1="{min(ys):.1f}" y2="{max(ys):.1f}" stroke="{colour}" stroke-width="2"/>'
                   f'<text x="{x + 6}" y="{min(ys) + 4:.1f}" font-size="11" fill="{colour}">tied: {_e(canonical)}</text></g>')
    out.append("</svg>")
    return "".join(out)
