"""Small SVG line charts for the run report: inline, no scripts, readable without a network."""
from __future__ import annotations

import html
import math

from runner.tracking.health import _finite

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def ramp(i: int, n: int) -> str:
    """Light to dark blue: early to late."""
    t = i / max(n - 1, 1)
    r, g, b = (int(200 - 170 * t), int(220 - 130 * t), int(245 - 60 * t))
    return f"#{r:02x}{g:02x}{b:02x}"


def line_chart(name: str, series: list[tuple[str, list[tuple[float, float]], str]], *, title: str, y_label: str,
               log_y: bool = True, x_labels: list[str] | None = None, x_label: str = "step",
               band: tuple[float, float] | None = None, width: int = 960, height: int = 360,
               legend: bool = True) -> str:
    """An SVG chart: ``series`` of (label, [(x, y)], colour); on a log y axis non-positive values
    are left out. ``x_labels``: categorical x (positions 0..n-1), e.g. layers in network order."""
    longest = max((len(str(x)) for x in x_labels), default=0) if x_labels else 0
    left, right, top, bottom = 80, 20 if not legend else 230, 34, min(240, 30 + 5 * longest) if x_labels else 46
    w, h = width - left - right, height - top - bottom
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    pts = [(x, ty(y)) for _, s, _ in series for x, y in s if _finite(y) and (y > 0 or not log_y)]
    if band and log_y:
        pts += [(pts[0][0] if pts else 0, ty(band[0])), (pts[0][0] if pts else 0, ty(band[1]))]
    out = [f'<svg class="chart" data-chart="{esc(name)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<text x="{left}" y="20" font-size="15" font-weight="bold">{esc(title)}</text>']
    if not pts:
        out.append(f'<text x="{left + 10}" y="{top + h / 2}" font-size="13" fill="#666">no data</text></svg>')
        return "".join(out)
    xs = [p[0] for p in pts] + ([0, len(x_labels) - 1] if x_labels else [])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if log_y:
        y0, y1 = math.floor(y0), math.ceil(y1)
    if y1 <= y0:
        y0, y1 = y0 - 1, y1 + 1
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    X = lambda x: left + (x - x0) / (x1 - x0) * w  # noqa: E731
    Y = lambda y: top + h - (y - y0) / (y1 - y0) * h  # noqa: E731
    if band:
        b0, b1 = (ty(band[0]), ty(band[1]))
        b0, b1 = max(b0, y0), min(b1, y1)
        if b1 > b0:
            out.append(f'<rect class="band" x="{left}" y="{Y(b1):.1f}" width="{w}" height="{Y(b0) - Y(b1):.1f}" '
                       'fill="#2ca02c" fill-opacity="0.12"/>')
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#333"/>')
    ticks = range(int(y0), int(y1) + 1) if log_y else [y0 + (y1 - y0) * i / 4 for i in range(5)]
    for t in ticks:
        y = Y(t)
        label = f"1e{t}" if log_y else f"{t:.3g}"
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="12" text-anchor="end">{label}</text>')
    if x_labels:
        for i, label in enumerate(x_labels):
            x = X(i)
            out.append(f'<text transform="translate({x:.1f},{top + h + 10}) rotate(40)" font-size="11" '
                       f'class="xlabel">{esc(label)}</text>')
    else:
        for t in (x0, (x0 + x1) / 2, x1):
            out.append(f'<text x="{X(t):.1f}" y="{top + h + 18}" font-size="12" text-anchor="middle">{t:.0f}</text>')
        out.append(f'<text x="{left + w / 2}" y="{height - 8}" font-size="12" text-anchor="middle">{esc(x_label)}</text>')
    out.append(f'<text transform="translate(16,{top + h / 2}) rotate(-90)" font-size="12" text-anchor="middle">'
               f'{esc(y_label)}</text>')
    for i, (label, s, colour) in enumerate(series):
        seg = [(X(x), Y(ty(y))) for x, y in s if _finite(y) and (y > 0 or not log_y)]
        if not seg:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{x:.1f},{y:.1f}" for j, (x, y) in enumerate(seg))
        out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.6"><title>{esc(label)}</title></path>')
        if len(seg) == 1:
            out.append(f'<circle cx="{seg[0][0]:.1f}" cy="{seg[0][1]:.1f}" r="3" fill="{colour}"/>')
    if legend:
        shown = series if len(series) <= 14 else [series[0], series[len(series) // 2], series[-1]]
        for i, (label, _, colour) in enumerate(shown):
            y = top + 14 + i * 16
            out.append(f'<line x1="{left + w + 14}" x2="{left + w + 32}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" '
                       f'stroke-width="3"/><text x="{left + w + 38}" y="{y}" font-size="11">{esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def ratio_bar(value: float | None, band: tuple[float, float], lo: float = 1e-8, hi: float = 1.0) -> str:
    """A small log-scale bar for a table cell: the healthy band shaded, the value marked."""
    w, h = 140, 14
    pos = lambda v: (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * w  # noqa: E731
    out = [f'<svg class="ratio" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">',
           f'<rect x="0" y="3" width="{w}" height="{h - 6}" fill="#eee"/>',
           f'<rect x="{pos(band[0]):.1f}" y="3" width="{pos(band[1]) - pos(band[0]):.1f}" height="{h - 6}" '
           'fill="#2ca02c" fill-opacity="0.35"/>']
    if _finite(value) and value > 0:
        x = min(max(pos(value), 0), w)
        inside = band[0] <= value <= band[1]
        out.append(f'<rect x="{x - 1.5:.1f}" y="0" width="3" height="{h}" fill="{"#1a1a1a" if inside else "#d62728"}"/>')
    out.append("</svg>")
    return "".join(out)
