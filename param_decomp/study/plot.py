"""The study's figure: val bits per byte against training step, one line per cell (mean over
seeds) with the min-max band shaded; one column per vocabulary. The lower row zooms on the
second half of training, where the cells' differences are small next to the early drop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from param_decomp.study.summary import CellResult


def _draw(ax: Axes, results: list[CellResult], from_step: int) -> None:
    for i, result in enumerate(results):
        curve = result.curve
        if curve is None:
            continue
        steps = np.asarray(curve.steps)
        keep = steps >= from_step
        color = f"C{i % 10}"
        label = f"{result.cell.name} ({result.objective}, n={len(result.records)})"
        ax.plot(steps[keep], np.asarray(curve.mean)[keep], color=color, label=label, lw=1.4)
        ax.fill_between(
            steps[keep],
            np.asarray(curve.lo)[keep],
            np.asarray(curve.hi)[keep],
            color=color,
            alpha=0.2,
            lw=0,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("val bits per byte")
    ax.grid(alpha=0.3)


def write_plot(results: list[CellResult], path: Path) -> None:
    """PNG with no timestamp in it, so an unchanged study re-renders byte for byte."""
    groups: dict[str, list[CellResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    fig = Figure(figsize=(6.5 * len(groups), 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(groups), squeeze=False)
    for col, (group, members) in enumerate(groups.items()):
        last = max((r.curve.steps[-1] for r in members if r.curve), default=0)
        _draw(axes[0][col], members, 0)
        axes[0][col].set_title(f"{group}: mean over seeds, min-max shaded")
        _draw(axes[1][col], members, last // 2)
        axes[1][col].set_title(f"{group}: from step {last // 2}")
        axes[0][col].legend(fontsize=7, loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
