"""The run report: one self-contained HTML file that answers "is every layer healthy?".

In network order, with tie groups marked: the findings (``runner.tracking.health``), a layer-health
table, gradient flow across depth (a line per logging step, log axis), each tensor's update ratio
over time (log axis, the healthy band shaded), the losses, legible heat maps on one colour scale
per kind (exact zeros in a strip of their own), the architecture, the init report and the tie map.
Charts are inline SVG and the heat maps inline PNG: no script, no network. Built in the writer
process from the history the tracker sends, logged as the artifact ``report.html`` (MLflow's
artifact viewer shows it) and written into the run directory.
"""
from __future__ import annotations

import base64
import io
import math
import time

from runner.tracking.charts import PALETTE, esc, line_chart, ramp, ratio_bar
from runner.tracking.health import BAND, Finding, ModelInfo, layer_table

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1a1a1a;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;font-size:13px} table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:right;white-space:nowrap} th{background:#f6f6f6}
td.name,th.name{text-align:left} .finding{padding:6px 10px;margin:4px 0;border-left:4px solid #d62728;background:#fdf0f0}
.ok{padding:6px 10px;border-left:4px solid #2ca02c;background:#f0f8f0} .tie{color:#9467bd;font-size:11px}
.maps{display:grid;grid-template-columns:repeat(auto-fill,minmax(620px,1fr));gap:8px} .maps img{width:100%}
.warn{color:#d62728;font-weight:bold} nav a{margin-right:12px;font-size:13px}
"""


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float) and not math.isfinite(v):
        return f'<span class="warn">{v}</span>'
    return f"{v:.{digits}g}"


def heatmap_png(key: str, steps: list[int], series: list, bins: int) -> bytes:
    from runner.tracking.images import heatmap

    buf = io.BytesIO()
    heatmap(key, steps, series, bins).quantize(128).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def build(review: dict, maps: dict[str, bytes]) -> str:
    """The report's HTML from a tracker's ``review`` (see ``Tracker.render``) and drawn heat maps."""
    meta = review.get("meta") or {}
    model = ModelInfo.from_dict(review["model"])
    entries = [(int(s), m) for s, m in review["history"]]
    findings = [Finding(**f) for f in review["findings"]]
    step = review["step"]
    params = [t for t in model.tensors if t["kind"] == "param"]
    order = [t["name"] for t in params]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(meta.get('title', 'run report'))}</title>"
             f"<style>{CSS}</style></head><body>"]
    final = ", ".join(f"{k} {v:.4g}" for k, v in (review["epochs"][-1][1] if review["epochs"] else {}).items())
    parts.append(f"<h1>{esc(meta.get('title', 'Run report'))}</h1><div class='sub'>"
                 f"{esc(meta.get('model', ''))} &middot; step {step}"
                 f"{' (steps ' + str(entries[0][0]) + '&ndash;' + str(entries[-1][0]) + ' logged)' if entries else ''}"
                 f" &middot; {esc(final)} &middot; drawn {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 f"{' &middot; run ' + esc(meta['run_id']) if meta.get('run_id') else ''}</div>")
    parts.append("<nav><a href='#findings'>Findings</a><a href='#health'>Layer health</a><a href='#flow'>Gradient "
                 "flow</a><a href='#updates'>Update ratios</a><a href='#loss'>Loss</a><a href='#maps'>Heat maps</a>"
                 "<a href='#architecture'>Architecture</a><a href='#init'>Init</a></nav>")
    parts.append("<h2 id='findings'>Findings</h2>")
    if findings:
        parts += [f"<div class='finding' data-rule='{esc(f.rule)}'><b>{esc(f.rule)}</b>: {esc(f.message)}</div>"
                  for f in findings]
    else:
        parts.append("<div class='ok'>No findings: gradients reach every layer, update ratios are in the healthy band, "
                     "no dead ReLU layer, nothing stopped moving, every step finite.</div>")
    # layer health table
    parts.append("<h2 id='health'>Layer health</h2><table class='health'><tr><th class='name'>tensor</th><th>layer type"
                 "</th><th>values</th><th>weight std</th><th>drift of norm</th><th>grad norm</th><th>update ratio (recent median)</th>"
                 f"<th>log scale (band {BAND[0]:g}&ndash;{BAND[1]:g})</th><th>dead ReLU share</th><th>non-finite</th></tr>")
    for row in layer_table(model, entries):
        tie = f"<div class='tie'>shared as {esc(', '.join(row['aliases']))}</div>" if row["aliases"] else ""
        parts.append(f"<tr data-layer='{esc(row['name'])}'><td class='name'>{esc(row['name'])}{tie}</td>"
                     f"<td>{esc(row['type'])}</td><td>{row['numel']:,}</td><td>{_fmt(row['weight_std'])}</td>"
                     f"<td>{_fmt(row['drift'])}</td><td>{_fmt(row['grad_norm'])}</td>"
                     f"<td>{_fmt(row['update_ratio_median'])}</td><td>{ratio_bar(row['update_ratio_median'], BAND)}</td>"
                     f"<td>{_fmt(row['dead'], 2) if row['dead'] is not None else '&ndash;'}</td>"
                     f"<td>{row['nonfinite'] or ''}</td></tr>")
    parts.append("</table>")
    # gradient flow across depth: one line per logging step
    mats = [n for n in order if not n.endswith(".bias")]
    lines = []
    for i, (s, m) in enumerate(entries):
        pts = [(j, m[f"grad_norm/{n}"]) for j, n in enumerate(mats) if f"grad_norm/{n}" in m]
        if pts:
            lines.append((f"step {s}", pts, ramp(i, len(entries))))
    parts.append("<h2 id='flow'>Gradient flow</h2><div class='sub'>Gradient norm of each weight tensor, input to "
                 "output; a line per logging step, light to dark.</div>")
    parts.append(line_chart("gradient-flow", lines, title="gradient norm across depth", y_label="grad norm",
                            x_labels=mats, width=1100, height=420))
    # update ratios over time, a line per tensor
    ups = []
    for i, n in enumerate(order):
        pts = [(s, m[f"update_ratio/{n}"]) for s, m in entries if s > 1 and f"update_ratio/{n}" in m]
        if pts:
            ups.append((n, pts, PALETTE[i % len(PALETTE)]))
    parts.append("<h2 id='updates'>Update ratios</h2><div class='sub'>||w_after &minus; w_before|| / ||w_after|| per "
                 "step, log axis; the shaded band is healthy.</div>")
    parts.append(line_chart("update-ratio", ups, title="update ratio over time", y_label="update ratio", band=BAND,
                            width=1100, height=420))
    # losses
    loss = [("train/loss", [(s, m["train/loss"]) for s, m in entries if "train/loss" in m], PALETTE[0]),
            ("val/loss", [(s, m["val/loss"]) for s, m in review["epochs"] if "val/loss" in m], PALETTE[3])]
    parts.append("<h2 id='loss'>Loss</h2>")
    parts.append(line_chart("loss", loss, title="loss", y_label="loss", width=1100, height=320))
    # heat maps, network order, weights beside gradients
    parts.append("<h2 id='maps'>Heat maps</h2><div class='sub'>Share of a tensor's values per bin (log10 colour, one "
                 "scale for all maps), per logging step; exact zeros in the strip below each map.</div><div class='maps'>")
    for n in order:
        for kind in ("weight", "grad"):
            png = maps.get(f"{kind}/{n}")
            if png:
                parts.append(f"<img alt='{kind} {esc(n)}' data-map='{kind}/{esc(n)}' "
                             f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</div>")
    from runner.model.picture import architecture_svg

    parts.append("<h2 id='architecture'>Architecture</h2>" + architecture_svg(model))
    init = meta.get("init_report") or {}
    if init.get("parameters"):
        parts.append("<h2 id='init'>Init report</h2><table><tr><th class='name'>tensor</th><th class='name'>rule</th>"
                     "<th class='name'>initializer</th><th class='name'>source</th><th>mean</th><th>std</th>"
                     "<th>min</th><th>max</th></tr>")
        for e in init["parameters"]:
            parts.append(f"<tr><td class='name'>{esc(e['name'])}</td><td class='name'>{esc(e['rule'])}</td>"
                         f"<td class='name'>{esc(e['init'])}</td><td class='name'>{esc(e.get('source', ''))}</td>"
                         f"<td>{_fmt(e['mean'])}</td><td>{_fmt(e['std'])}</td><td>{_fmt(e['min'])}</td>"
                         f"<td>{_fmt(e['max'])}</td></tr>")
        parts.append("</table>")
    if model.ties:
        parts.append("<h2>Tie map</h2><table><tr><th class='name'>stored tensor</th><th class='name'>aliases</th>"
                     "<th class='name'>transposed</th></tr>")
        for c, g in model.ties.items():
            parts.append(f"<tr><td class='name'>{esc(c)}</td><td class='name'>{esc(', '.join(g['aliases']))}</td>"
                         f"<td class='name'>{esc(', '.join(g['transposed']))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
