"""Histogram heat maps: how a tensor's distribution moved over training, as one image.

MLflow has no histogram type; an image per tensor, logged with a step, shows in the UI's image
view with a step slider. x is the training step, y the value, colour the share of values in the
bin (log scale), drawn from the sampled values the collector keeps at each logging step.
"""
from __future__ import annotations

import numpy as np


def heatmap(title: str, steps: list[int], samples: list[list[float]], bins: int = 40):
    """A PIL image of the histogram of ``samples[i]`` at ``steps[i]`` for every i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    data = [np.asarray(s, dtype=np.float64) for s in samples]
    finite = np.concatenate([d[np.isfinite(d)] for d in data]) if data else np.zeros(1)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    grid = np.stack([np.histogram(d[np.isfinite(d)], bins=edges)[0] / max(len(d), 1) for d in data], axis=1)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    x = np.asarray(steps)
    x_edges = np.concatenate([x - 0.5, [x[-1] + 0.5]]) if len(x) else np.array([0, 1])
    mesh = ax.pcolormesh(x_edges, edges, np.log10(grid + 1e-4), shading="flat", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="log10 share")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    fig.tight_layout()
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return image
