"""Figures for inspecting a decomposition: causal-importance heatmaps and component weights.

Uses the non-interactive Agg backend so figures can be written on headless training machines.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402


def permute_to_identity(ci: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder components so the CI matrix looks as much like an identity as possible.

    Components have no intrinsic order, so a greedy matching (each feature row, in order, takes the
    unused column with the largest value) makes a one-component-per-feature solution visible as a
    diagonal. Leftover columns follow, sorted by their max value descending (ties: original order).
    Returns the column permutation (length C) and ``ci[:, perm]``.
    """
    arr = np.asarray(ci)
    if arr.ndim != 2:
        raise ValueError(f"ci must be 2D (n_features, C), got shape {arr.shape}")
    n_features, n_components = arr.shape
    used = np.zeros(n_components, dtype=bool)
    perm: list[int] = []
    for row in range(min(n_features, n_components)):
        vals = np.where(used, -np.inf, arr[row].astype(np.float64))
        col = int(np.argmax(vals))
        perm.append(col)
        used[col] = True
    rest = np.flatnonzero(~used)
    if rest.size:
        rest_max = arr[:, rest].max(axis=0) if n_features > 0 else np.zeros(rest.size)
        rest = rest[np.argsort(-rest_max, kind="stable")]
        perm.extend(int(c) for c in rest)
    perm_arr = np.asarray(perm, dtype=np.int64)
    return perm_arr, arr[:, perm_arr]


def _axes_list(axes: object) -> list[plt.Axes]:
    """Flatten whatever ``plt.subplots`` returned into a flat list of Axes."""
    return list(np.asarray(axes, dtype=object).ravel())


def figure_text(fig: plt.Figure) -> tuple[str, str]:
    """(suptitle, one line per panel: its title and axis labels) of a figure."""
    title = fig.get_suptitle()
    panels = [
        f"{ax.get_title()} | x: {ax.get_xlabel()} | y: {ax.get_ylabel()}"
        for ax in fig.axes
        if ax.get_title() or ax.get_xlabel() or ax.get_ylabel()
    ]
    return title, "\n".join(panels)


def save_png(fig: plt.Figure, path: Path) -> None:
    """Save as PNG with the title and every panel's title and axis labels in the PNG text
    chunks (`Title`, `Description`), so what a figure shows can be read without viewing it."""
    title, description = figure_text(fig)
    fig.savefig(Path(path), format="png", metadata={"Title": title, "Description": description})


def plot_causal_importance(
    ci_by_site: Mapping[str, np.ndarray], path: Path, title: str, row_label: str = "input feature"
) -> None:
    """Save one heatmap per site of the identity-permuted CI matrix (values in [0, 1]); the
    y axis says what a row is (`row_label`)."""
    sites = list(ci_by_site)
    if not sites:
        raise ValueError("ci_by_site is empty")
    fig, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 4.5), squeeze=False)
    try:
        for ax, site in zip(_axes_list(axes), sites, strict=True):
            _, permuted = permute_to_identity(np.asarray(ci_by_site[site]))
            im = ax.imshow(
                permuted, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest"
            )
            ax.set_title(site)
            ax.set_xlabel("component (permuted)")
            ax.set_ylabel(row_label)
            fig.colorbar(im, ax=ax)
        fig.suptitle(title)
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)


def _diverging_norm(arr: np.ndarray) -> TwoSlopeNorm:
    """Symmetric color range centred on zero, so sign is readable regardless of scale."""
    vmax = float(np.max(np.abs(arr))) if arr.size else 0.0
    if not np.isfinite(vmax) or vmax == 0.0:
        vmax = 1.0
    return TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)


def plot_components(
    V_by_site: Mapping[str, np.ndarray],
    U_by_site: Mapping[str, np.ndarray],
    path: Path,
    alive_by_site: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Save heatmaps of V (d_in, C) and U (C, d_out) per site, optionally only alive components.

    Dead components are dropped to keep the figure readable; if none are alive we still show the
    first component so each panel is non-empty.
    """
    sites = list(V_by_site)
    if not sites:
        raise ValueError("V_by_site is empty")
    fig, axes = plt.subplots(len(sites), 2, figsize=(10, 4 * len(sites)), squeeze=False)
    try:
        for i, site in enumerate(sites):
            V = np.asarray(V_by_site[site])
            U = np.asarray(U_by_site[site])
            n_components = V.shape[1]
            if U.shape[0] != n_components:
                raise ValueError(f"{site}: V has {n_components} components but U has {U.shape[0]}")
            idx = np.arange(n_components)
            if alive_by_site is not None and site in alive_by_site:
                alive = np.asarray(alive_by_site[site], dtype=bool)
                idx = np.flatnonzero(alive)
                if idx.size == 0:
                    idx = np.arange(min(1, n_components))
            V_sel, U_sel = V[:, idx], U[idx, :]
            for ax, mat, name, xlab, ylab in (
                (axes[i, 0], V_sel, "V", "component", "d_in"),
                (axes[i, 1], U_sel, "U", "d_out", "component"),
            ):
                im = ax.imshow(
                    mat,
                    cmap="RdBu_r",
                    norm=_diverging_norm(mat),
                    aspect="auto",
                    interpolation="nearest",
                )
                ax.set_title(f"{site}: {name} ({idx.size} of {n_components} components)")
                ax.set_xlabel(xlab)
                ax.set_ylabel(ylab)
                fig.colorbar(im, ax=ax)
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)


def write_figures(
    run_dir: Path,
    ci_by_site: Mapping[str, np.ndarray],
    V_by_site: Mapping[str, np.ndarray],
    U_by_site: Mapping[str, np.ndarray],
    alive_by_site: Mapping[str, np.ndarray] | None,
    ci_title: str = "Causal importance on one-hot inputs",
    ci_row_label: str = "input feature",
) -> list[Path]:
    """Write the standard eval figures under ``run_dir/figures`` and return their paths."""
    fig_dir = Path(run_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    ci_path = fig_dir / "causal_importance.png"
    comp_path = fig_dir / "components.png"
    plot_causal_importance(ci_by_site, ci_path, title=ci_title, row_label=ci_row_label)
    plot_components(V_by_site, U_by_site, comp_path, alive_by_site=alive_by_site)
    return [ci_path, comp_path]
