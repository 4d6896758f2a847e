"""Histogram heat maps: how a tensor's distribution moved over training, as one image.

x is the training step, y the value, colour the share of the tensor's values in each bin (log
scale), drawn from the values sampled at each logging step. Values that are exactly zero (dead
ReLU units, masked weights) would swamp the bin around zero; they are left out of the bins and
shown as their own strip under the map. A fixed colour range (``vmin``, ``vmax`` in log10 share)
lets maps of one kind be compared side by side. Drawn with numpy and Pillow: a map costs
milliseconds, so heat maps never hold a run up.
"""
from __future__ import annotations

import numpy as np

# viridis, sampled at 9 points and interpolated
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                     [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)
EMPTY = (235, 235, 235)
FLOOR = -4.0  # log10 share shown as the darkest colour


def colormap(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 (viridis)."""
    x = np.clip(v, 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(x.astype(int), len(_VIRIDIS) - 2)
    t = (x - i)[..., None]
    return (_VIRIDIS[i] * (1 - t) + _VIRIDIS[i + 1] * t).astype(np.uint8)


def histogram_grid(samples: list, bins: int = 40, lo: float | None = None, hi: float | None = None):
    """(log10 share per bin x step, share of exact zeros per step, bin edges) of each step's samples."""
    data = [np.asarray(s, dtype=np.float64) for s in samples]
    finite = [d[np.isfinite(d) & (d != 0)] for d in data]
    allv = np.concatenate(finite) if finite else np.zeros(0)
    if lo is None or hi is None:
        lo, hi = (float(np.quantile(allv, 0.001)), float(np.quantile(allv, 0.999))) if allv.size else (-1.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.stack([np.histogram(np.clip(f, lo, hi), bins=edges)[0] / max(len(d), 1)
                       for f, d in zip(finite, data)], axis=1) if data else np.zeros((bins, 0))
    zeros = np.array([float(np.mean(d == 0)) if len(d) else 0.0 for d in data])
    with np.errstate(divide="ignore"):
        grid = np.where(counts > 0, np.log10(np.maximum(counts, 1e-12)), -np.inf)
    return grid, zeros, edges


def heatmap(title: str, steps: list[int], samples: list, bins: int = 40, vmin: float = FLOOR, vmax: float = 0.0,
            width: int = 1000, height: int = 420):
    """A PIL image of the histogram of ``samples[i]`` at ``steps[i]`` for every i."""
    from PIL import Image, ImageDraw, ImageFont

    grid, zeros, edges = histogram_grid(samples, bins)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=15)
    left, right, top, bottom, strip = 110, 120, 40, 58, 14
    w, h = width - left - right, height - top - bottom - strip - 6
    img = Image.new("RGB", (width, height), "white")
    cols = max(grid.shape[1], 1)
    shade = np.where(np.isfinite(grid), (grid - vmin) / max(vmax - vmin, 1e-9), np.nan)
    rgb = colormap(np.nan_to_num(shade, nan=0.0))
    rgb[~np.isfinite(grid)] = EMPTY
    body = Image.fromarray(rgb[::-1].copy()).resize((w, h), Image.NEAREST) if grid.size else Image.new("RGB", (w, h), EMPTY)
    img.paste(body, (left, top))
    z = (255 - 200 * zeros).astype(np.uint8)
    zstrip = Image.fromarray(np.repeat(z[None, :, None], 3, axis=2)).resize((w, strip), Image.NEAREST)
    img.paste(zstrip, (left, top + h + 6))
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black", font=font)
    d.rectangle([left - 1, top - 1, left + w, top + h], outline="black")
    for frac, value in ((0.0, edges[0]), (0.5, (edges[0] + edges[-1]) / 2), (1.0, edges[-1])):
        y = top + h - frac * h
        d.line([left - 6, y, left, y], fill="black")
        d.text((left - 8, y), f"{value:.3g}", fill="black", font=small, anchor="rm")
    d.text((left - 8, top + h + 6 + strip / 2), "zeros", fill="gray", font=small, anchor="rm")
    if steps:
        for i in sorted({0, len(steps) // 2, len(steps) - 1}):
            x = left + (i + 0.5) * w / cols
            d.line([x, top + h, x, top + h + 4], fill="black")
            d.text((x, top + h + strip + 10), str(steps[i]), fill="black", font=small, anchor="mt")
    d.text((left + w / 2, height - 6), "step", fill="black", font=small, anchor="mb")
    # colour bar: log10 share
    bx = left + w + 30
    bar = colormap(np.linspace(1, 0, h)[:, None].repeat(16, axis=1))
    img.paste(Image.fromarray(bar), (bx, top))
    d.rectangle([bx - 1, top - 1, bx + 16, top + h], outline="black")
    for frac, value in ((0.0, vmin), (1.0, vmax)):
        d.text((bx + 22, top + h - frac * h), f"{value:g}", fill="black", font=small, anchor="lm")
    d.text((bx + 22, top + h / 2), "log10\nshare", fill="black", font=small, anchor="lm")
    return img
