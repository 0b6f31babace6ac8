"""Figures of the CI statistics (S14.7): one panel per site, each titled with the site, how
many inputs and components it covers, and axes that say what is counted.

Every site's number of components is its own (read from its statistics), so sites with
different C share a figure without any padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from param_decomp.eval.ci_stats import SiteCIStats
from param_decomp.eval.figures import plt, save_png

MAX_COLUMNS = 4


def _grid(n_panels: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(MAX_COLUMNS, n_panels)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.8), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def _per_site(
    stats: Mapping[str, SiteCIStats],
    path: Path,
    title: str,
    draw: Callable[[plt.Axes, str, SiteCIStats], None],
) -> Path:
    if not stats:
        raise ValueError("no sites to plot")
    fig, axes = _grid(len(stats))
    try:
        for ax, (site, st) in zip(axes, stats.items(), strict=True):
            draw(ax, site, st)
        fig.suptitle(title)
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)
    return Path(path)


def _log_counts(ax: plt.Axes, counts: np.ndarray, edges: np.ndarray) -> None:
    """Bars of the nonzero bins on a log count axis (a zero count has no log)."""
    widths = np.diff(edges)
    nonzero = counts > 0
    ax.bar(edges[:-1][nonzero], counts[nonzero], width=widths[nonzero], align="edge")
    ax.set_yscale("log")


def plot_ci_histograms(
    stats: Mapping[str, SiteCIStats], path: Path, unit: str, step_label: str
) -> Path:
    """Histogram of ci_lower over every (input, component) pair of each site, log counts."""

    def draw(ax: plt.Axes, site: str, st: SiteCIStats) -> None:
        _log_counts(ax, st.ci_counts, st.ci_edges)
        ax.set_xlim(0.0, 1.0)
        ax.set_title(f"{site}: {st.n_inputs} {unit} x {st.n_components} components")
        ax.set_xlabel("ci_lower (lower leaky-hard CI, in [0, 1])")
        ax.set_ylabel("count of (input, component) pairs, log")

    title = f"Histogram of causal importances (ci_lower) per site on the eval batches, {step_label}"
    return _per_site(stats, path, title, draw)


def plot_pre_activation_histograms(
    stats: Mapping[str, SiteCIStats], path: Path, unit: str, step_label: str
) -> Path:
    """Histogram of the CI function's raw outputs before squashing; lines at 0 and 1 mark
    where ci_lower clips."""

    def draw(ax: plt.Axes, site: str, st: SiteCIStats) -> None:
        _log_counts(ax, st.pre_counts, st.pre_edges)
        lo, hi = float(st.pre_edges[0]), float(st.pre_edges[-1])
        for edge in (0.0, 1.0):
            if lo <= edge <= hi:
                ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{site}: {st.n_inputs} {unit} x {st.n_components} components")
        ax.set_xlabel("CI pre-activation (before squashing; dotted: 0 and 1)")
        ax.set_ylabel("count of (input, component) pairs, log")

    title = f"Histogram of CI pre-activations per site on the eval batches, {step_label}"
    return _per_site(stats, path, title, draw)


def _sorted_positive(
    ax: plt.Axes, values: np.ndarray, ylabel: str, site: str, zero_means: str, n: int, unit: str
) -> None:
    """Values sorted descending against component rank on a log axis; zeros cannot be drawn
    on it and are counted in the panel title instead (`zero_means` says what a zero is)."""
    ordered = np.sort(values)[::-1]
    positive = ordered[ordered > 0]
    C = values.shape[0]
    if positive.size:
        ax.plot(np.arange(positive.size), positive, marker=".", linewidth=1)
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, f"all {C} components {zero_means}", ha="center", transform=ax.transAxes)
    ax.set_xlim(-0.5, max(C, 1) - 0.5)
    zeros = C - positive.size
    ax.set_title(
        f"{site}: {C} components on {n} {unit}\n{zeros} {zero_means} (not drawn)", fontsize=10
    )
    ax.set_xlabel("component rank (sorted by value, descending)")
    ax.set_ylabel(ylabel)


def plot_activation_density(
    stats: Mapping[str, SiteCIStats], path: Path, unit: str, threshold: float, step_label: str
) -> Path:
    """Per component: the fraction of inputs where ci_lower > threshold, sorted."""

    def draw(ax: plt.Axes, site: str, st: SiteCIStats) -> None:
        ylabel = f"fraction of {unit} with ci_lower > {threshold:g}, log"
        never = f"never above {threshold:g}"
        _sorted_positive(ax, st.density, ylabel, site, never, st.n_inputs, unit)

    title = (
        f"Component activation density per site (ci_lower > {threshold:g}) on the eval "
        f"batches, {step_label}"
    )
    return _per_site(stats, path, title, draw)


def plot_mean_ci(stats: Mapping[str, SiteCIStats], path: Path, unit: str, step_label: str) -> Path:
    """Per component: ci_lower averaged over the inputs, sorted."""

    def draw(ax: plt.Axes, site: str, st: SiteCIStats) -> None:
        ylabel = f"mean ci_lower over {unit}, log"
        _sorted_positive(ax, st.mean_ci, ylabel, site, "with mean CI 0", st.n_inputs, unit)

    title = f"Mean causal importance per component per site on the eval batches, {step_label}"
    return _per_site(stats, path, title, draw)
