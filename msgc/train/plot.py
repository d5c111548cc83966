"""Loss curves as a PNG: loss against training wall time and against training FLOPs.

Each run is one colour: its training loss (smoothed, thin), its validation loss (markers,
joined) and its growth events (dotted vertical lines). Uses matplotlib's Agg backend, so it
needs no display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

__all__ = ["plot_runs", "smooth"]

Rows = Sequence[Mapping[str, Any]]
AXES = (("time", "training wall time (s)"), ("flops", "training FLOPs"))


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_runs(runs: Mapping[str, Rows], path: Path, title: str = "") -> Path:
    """Plot every run's metrics rows (see msgc.train.metrics) into `path`; return it."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        for ax, (key, _) in zip(axes, AXES, strict=True):
            _plot_run(ax, rows, key, label, colour)
    for ax, (_, xlabel) in zip(axes, AXES, strict=True):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (nats/token)")
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_run(ax: Any, rows: Rows, key: str, label: str, colour: str) -> None:
    """One run on one axis: smoothed training loss, validation loss, growth events."""
    ax.plot([r[key] for r in rows], smooth([r["loss"] for r in rows]), color=colour,
            alpha=0.45, linewidth=1)
    evals = [r for r in rows if r.get("val_loss") is not None]
    ax.plot([r[key] for r in evals], [r["val_loss"] for r in evals], color=colour, marker="o",
            markersize=3, label=f"{label} (val)")
    for row in rows:
        if "loss_before" in row:
            ax.axvline(row[key], color=colour, linestyle=":", alpha=0.7)
