"""Layer health: the numbers a reviewer looks at first, and rules that flag what is wrong.

A run's history (the statistics of its logging steps, its epoch metrics and its skipped steps,
all by runner name, see ``runner.tracking.keys``) and a description of its model (tensors and
layers in network order, tie groups, which layers are ReLUs) give:

- :func:`layer_table`: one row per tensor, in network order: weight std and its drift from the
  first logged value, gradient norm, update ratio (the median of the steps the rules judge),
  dead-unit share (of its ReLU layer, or of the ReLU that takes its layer's output, with
  ``tracking.activations``), and how often its statistics were not finite;
- :func:`diagnose`: findings, each naming the layer, the step and the number:

  ``vanishing_gradients`` / ``exploding_gradients``: the RMS gradient of the first weight
  matrix is below 1/1000 (above 1000 times) that of the last one; ``update_too_large`` /
  ``update_too_small``: a tensor's median update ratio over the last logging steps is above 3e-2
  or below 1e-5 (healthy is around 1e-3); ``stopped``: below 1e-8, the tensor no longer moves.
  The two "too small" rules look at the last logging steps whose learning rate was at least a
  tenth of its peak: a schedule that anneals toward zero slows every update on purpose;
  ``dead_relu``: 95 % or more of a ReLU layer's outputs are zero, or a ReLU layer's weights get
  no gradient at all; ``no_gradient``: another tensor gets none; ``nonfinite``: skipped
  non-finite steps, or weights that are NaN/Inf.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

BAND = (1e-4, 1e-2)      # healthy update ratios (drawn in the report)
TOO_LARGE, TOO_SMALL, STOPPED = 3e-2, 1e-5, 1e-8
DEPTH_RATIO = 1e3        # first/last RMS gradient beyond this (or its inverse): vanishing / exploding
DEAD = 0.95
RECENT = 5               # logging steps a rule looks back over
LR_FLOOR = 0.1           # "too small" rules skip steps whose learning rate fell below this share of its peak


@dataclass
class Finding:
    rule: str
    layer: str          # the tensor or layer it is about ("" for the whole run)
    step: int
    value: float
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelInfo:
    """What the report needs to know about a model, in network order (JSON-able)."""

    tensors: list[dict] = field(default_factory=list)   # name, layer, type, numel, shape, ties, kind
    layers: list[dict] = field(default_factory=list)    # name, type, relu, shape, params, depth, tied_to
    ties: dict = field(default_factory=dict)             # runner.model.tie_map

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        return cls(d.get("tensors", []), d.get("layers", []), d.get("ties", {}))

    @classmethod
    def of(cls, net) -> "ModelInfo":
        from runner import names as N
        from runner.model.layers import is_relu
        from runner.model.summary import summarize
        from runner.model.ties import tie_map

        ties = tie_map(net)
        tied = {a: c for c, g in ties.items() for a in [*g["aliases"], *g["transposed"]]}
        params = net.params()
        tensors = []
        for name, t in net.tensors().items():
            layer = N.parent(name)
            info = net.infos.get(layer)
            tensors.append({"name": name, "layer": layer, "type": info.type if info else "", "numel": t.numel(),
                            "shape": list(t.shape), "kind": "param" if name in params else "buffer",
                            "aliases": [a for a, c in tied.items() if c == name]})
        rows = {r.name: r for r in summarize(net).rows}
        layers = []
        for name, info in net.infos.items():
            if not name:
                continue
            r = rows.get(name)
            layers.append({"name": name, "type": info.type, "relu": is_relu(net.module(name)),
                           "shape": list(info.out_shape), "params": r.params if r else 0,
                           "subtotal": r.subtotal if r else 0, "depth": name.count("."), "block": info.is_block,
                           "shared": list(r.shared) if r else [], "reuse_of": info.reuse_of})
        return cls(tensors, layers, ties)


def _series(entries, key: str) -> list[tuple[int, float]]:
    return [(step, m[key]) for step, m in entries if key in m]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def layer_table(model: ModelInfo, entries: list[tuple[int, dict]]) -> list[dict]:
    """One row per parameter tensor, in network order (see the module docstring)."""
    relu = {l["name"] for l in model.layers if l["relu"]}
    after = _relu_after(model)
    steady = {s for s, _ in _steady(entries)}
    rows = []
    for t in model.tensors:
        if t["kind"] != "param":
            continue
        name = t["name"]
        std = _series(entries, f"weight_std/{name}")
        norm = _series(entries, f"weight_norm/{name}")
        grad = _series(entries, f"grad_norm/{name}")
        ratio = [(s, v) for s, v in _series(entries, f"update_ratio/{name}") if s > 1]
        dead_layer = t["layer"] if t["layer"] in relu else after.get(t["layer"])
        dead = _series(entries, f"act_dead/{dead_layer}") if dead_layer else []
        bad = sum(1 for _, m in entries for k in (f"weight_norm/{name}", f"grad_norm/{name}")
                  if k in m and not _finite(m[k]))
        last = lambda s: s[-1][1] if s else None  # noqa: E731
        drift = None
        if len(norm) >= 2 and _finite(norm[0][1]) and norm[0][1] > 0 and _finite(norm[-1][1]):
            drift = norm[-1][1] / norm[0][1] - 1
        rows.append({"name": name, "layer": t["layer"], "type": t["type"], "numel": t["numel"],
                     "aliases": t.get("aliases", []), "weight_std": last(std), "weight_norm": last(norm),
                     "drift": drift, "grad_norm": last(grad), "update_ratio": last(ratio),
                     "update_ratio_median": _median([v for s, v in ratio if s in steady][-RECENT:]),
                     "dead": last(dead) if dead else None, "nonfinite": bad, "step": entries[-1][0] if entries else 0})
    return rows


def _relu_after(model: ModelInfo) -> dict[str, str]:
    """Layer with parameters -> the parameter-free ReLU that takes its output (conv, then norm,
    then a ``relu`` node: the norm's row shows the ReLU's dead share)."""
    out, prev = {}, None
    for l in model.layers:
        if l.get("block"):
            continue
        if l["params"] or l.get("reuse_of"):
            prev = l["name"]
        elif l["relu"] and prev is not None and prev not in out:
            out[prev] = l["name"]
            prev = None
    return out


def _median(values):
    values = [v for v in values if _finite(v)]
    return statistics.median(values) if values else None


def _steady(entries: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """The entries whose learning rate was at least LR_FLOOR of its peak (``train/lr`` carried
    forward: the store holds it only where it changed); all of them when no rate is known."""
    lr, rates = None, []
    for _, m in entries:
        lr = m.get("train/lr", lr)
        rates.append(lr if _finite(lr) else None)
    known = [r for r in rates if r is not None]
    if not known or max(known) <= 0:
        return entries
    peak = max(known)
    return [e for e, r in zip(entries, rates) if r is None or r >= LR_FLOOR * peak]


def diagnose(model: ModelInfo, entries: list[tuple[int, dict]], skipped: list[int]) -> list[Finding]:
    """Every finding about a run (see the module docstring), most serious first."""
    out: list[Finding] = []
    if skipped:
        out.append(Finding("nonfinite", "", skipped[0], float(len(skipped)),
                           f"{len(skipped)} non-finite step(s) skipped, the first at step {skipped[0]}"))
    if not entries:
        return out
    last_step, last = entries[-1]
    params = [t for t in model.tensors if t["kind"] == "param"]
    for t in params:
        v = last.get(f"weight_norm/{t['name']}")
        if v is not None and not _finite(v):
            out.append(Finding("nonfinite", t["name"], last_step, v, f"{t['name']} is not finite (NaN/Inf) at step "
                                                                     f"{last_step}"))
    # gradients across depth: RMS gradient of the weight matrices, first vs last
    recent = entries[-RECENT:]
    mats = [t for t in params if len(t["shape"]) >= 2 and not t["name"].endswith(".bias")]
    if len(mats) >= 3:
        first, lastm = mats[0], mats[-1]

        def rms(t, m):
            g = m.get(f"grad_norm/{t['name']}")
            return g / math.sqrt(t["numel"]) if _finite(g) else None

        ratios = []
        for step, m in recent:
            a, b = rms(first, m), rms(lastm, m)
            if a is not None and b is not None and b > 0:
                ratios.append((step, a / b, a, b))
        if ratios:
            step, ratio, a, b = ratios[-1]
            med = statistics.median(r for _, r, _, _ in ratios)
            if med < 1 / DEPTH_RATIO and a == 0:
                out.append(Finding("vanishing_gradients", first["name"], step, ratio,
                                   f"gradients vanish toward the input: none reaches {first['name']} at step {step}, "
                                   f"while {lastm['name']} gets an RMS gradient of {b:.3g}"))
            elif med < 1 / DEPTH_RATIO:
                out.append(Finding("vanishing_gradients", first["name"], step, ratio,
                                   f"gradients vanish toward the input: RMS gradient {a:.3g} at {first['name']} vs "
                                   f"{b:.3g} at {lastm['name']} ({ratio:.2g}x) at step {step}"))
            elif med > DEPTH_RATIO:
                out.append(Finding("exploding_gradients", first["name"], step, ratio,
                                   f"gradients grow toward the input: RMS gradient {a:.3g} at {first['name']} vs "
                                   f"{b:.3g} at {lastm['name']} ({ratio:.2g}x) at step {step}"))
    relu_layers = {l["name"] for l in model.layers if l["relu"]}
    for l in model.layers:
        if l["relu"]:
            d = [v for _, m in recent if _finite(v := m.get(f"act_dead/{l['name']}"))]
            if d and min(d) >= DEAD:
                out.append(Finding("dead_relu", l["name"], last_step, d[-1],
                                   f"{l['name']}: {d[-1]:.0%} of its ReLU outputs are zero at step {last_step}"))
    steady = _steady(entries)[-RECENT:]
    annealed = bool(steady) and steady[-1][0] != last_step
    dead_named = {f.layer for f in out if f.rule == "dead_relu"}
    for t in params:
        name = t["name"]
        grads = [v for _, m in recent if (v := m.get(f"grad_norm/{name}")) is not None]
        if grads and all(v == 0 for v in grads):
            if t["layer"] in relu_layers:
                if t["layer"] not in dead_named:
                    dead_named.add(t["layer"])
                    out.append(Finding("dead_relu", t["layer"], last_step, 0.0,
                                       f"{t['layer']}: no gradient reaches its weights at step {last_step} "
                                       "(its ReLU units are dead)"))
            else:
                out.append(Finding("no_gradient", name, last_step, 0.0, f"{name} gets no gradient at step {last_step}"))
            continue
        if len(t["shape"]) < 2:  # biases and norm scales: the ratio of a near-zero vector says little
            continue
        def ratios_in(window):
            return [(s, v) for s, m in window if s > 1 and _finite(v := m.get(f"update_ratio/{name}", math.nan))]

        ratios = ratios_in(recent)
        if ratios and (med := statistics.median(v for _, v in ratios)) > TOO_LARGE:
            out.append(Finding("update_too_large", name, ratios[-1][0], med,
                               f"{name}: updates of {med:.3g} of its norm per step at step {ratios[-1][0]} (healthy: "
                               "about 1e-3); lower train.lr, or initialise it larger"))
            continue
        ratios = ratios_in(steady)
        if not ratios:
            continue
        med = statistics.median(v for _, v in ratios)
        step = ratios[-1][0]
        when = f"step {step}" + (" (before the learning-rate schedule decayed)" if annealed else "")
        if med < STOPPED:
            out.append(Finding("stopped", name, step, med, f"{name} has stopped moving: update ratio {med:.2g} at "
                                                            f"{when}"))
        elif med < TOO_SMALL:
            out.append(Finding("update_too_small", name, step, med,
                               f"{name}: updates of only {med:.2g} of its norm per step at {when} (healthy: "
                               "about 1e-3); it barely learns"))
    order = ["nonfinite", "exploding_gradients", "vanishing_gradients", "update_too_large", "dead_relu",
             "no_gradient", "stopped", "update_too_small"]
    return sorted(out, key=lambda f: order.index(f.rule))
