"""Tests for the identity permutation and that figures are written as valid PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from param_decomp.eval.figures import (
    permute_to_identity,
    plot_causal_importance,
    plot_components,
    write_figures,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_valid_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE)
    assert data[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert isinstance(img, np.ndarray)
    assert img.dtype == np.float32
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 50 and img.shape[1] > 50
    assert np.all((img >= 0.0) & (img <= 1.0))
    # Not a blank canvas: something was drawn.
    assert img[..., :3].std() > 0.01


def test_permutation_recovers_shuffled_identity() -> None:
    rng = np.random.default_rng(0)
    n = 7
    shuffle = rng.permutation(n)
    ci = np.eye(n)[:, shuffle]
    perm, permuted = permute_to_identity(ci)
    np.testing.assert_array_equal(permuted, np.eye(n))
    np.testing.assert_array_equal(ci[:, perm], permuted)


def test_permutation_with_extra_components() -> None:
    rng = np.random.default_rng(1)
    n, c = 5, 12
    ci = np.zeros((n, c))
    feature_cols = rng.choice(c, size=n, replace=False)
    ci[np.arange(n), feature_cols] = rng.uniform(0.8, 1.0, size=n)
    spare = np.setdiff1d(np.arange(c), feature_cols)
    spare_max = rng.uniform(0.0, 0.3, size=spare.size)
    ci[0, spare] = spare_max
    perm, permuted = permute_to_identity(ci)
    assert perm.shape == (c,)
    assert sorted(perm.tolist()) == list(range(c))
    np.testing.assert_array_equal(perm[:n], feature_cols)
    np.testing.assert_array_equal(permuted[:, :n] > 0.5, np.eye(n, dtype=bool))
    # Remaining columns are ordered by max value, descending.
    np.testing.assert_array_equal(perm[n:], spare[np.argsort(-spare_max)])


def test_permuted_values_are_column_permutation() -> None:
    rng = np.random.default_rng(2)
    ci = rng.uniform(size=(6, 9))
    perm, permuted = permute_to_identity(ci)
    assert sorted(perm.tolist()) == list(range(9))
    for j, col in enumerate(perm):
        np.testing.assert_array_equal(permuted[:, j], ci[:, col])
    # Greedy: row i takes the largest value among columns not used by earlier rows.
    for i in range(6):
        remaining = [c for c in range(9) if c not in perm[:i]]
        assert ci[i, perm[i]] == ci[i, remaining].max()


def test_plot_causal_importance_writes_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ci = {"linear1": rng.uniform(size=(5, 8)), "linear2": rng.uniform(size=(5, 8))}
    path = tmp_path / "ci.png"
    plot_causal_importance(ci, path, title="test")
    _assert_valid_png(path)


def test_plot_components_with_alive_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    V = {"linear1": rng.normal(size=(5, 8))}
    U = {"linear1": rng.normal(size=(8, 3))}
    path = tmp_path / "comp.png"
    plot_components(V, U, path, alive_by_site={"linear1": np.zeros(8, dtype=bool)})
    _assert_valid_png(path)
    path2 = tmp_path / "comp2.png"
    plot_components(V, U, path2)
    _assert_valid_png(path2)


def test_write_figures_creates_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    sites = ["linear1", "linear2"]
    ci = {s: rng.uniform(size=(4, 6)) for s in sites}
    V = {s: rng.normal(size=(4, 6)) for s in sites}
    U = {s: rng.normal(size=(6, 4)) for s in sites}
    alive = {s: ci[s].max(axis=0) > 0.5 for s in sites}
    run_dir = tmp_path / "run"
    paths = write_figures(run_dir, ci, V, U, alive)
    assert paths == [
        run_dir / "figures" / "causal_importance.png",
        run_dir / "figures" / "components.png",
    ]
    for p in paths:
        _assert_valid_png(p)


def test_toy_ci_figure_probes_at_0_75_and_says_so(tmp_path: Path) -> None:
    """Issue 11: single-feature inputs at 0.75 (inside the training range), named in the
    title and on the y axis; alive counting keeps the value-1 probe (S14.1)."""
    from param_decomp.config.schema import SparseFeatureData
    from param_decomp.data.sources import SparseFeatureSource

    data = SparseFeatureData(feature_probability=0.05)
    source = SparseFeatureSource(data, n_features=5, batch_size=4, seed=0)
    inputs, rows, title = source.figure_probe()
    np.testing.assert_array_equal(np.asarray(inputs), 0.75 * np.eye(5, dtype=np.float32))
    assert "0.75" in title and "0.75" in rows
    np.testing.assert_array_equal(np.asarray(source.probe()), np.eye(5, dtype=np.float32))
    ci = {"linear1": np.eye(5)}
    path = tmp_path / "ci.png"
    plot_causal_importance(ci, path, title=title, row_label=rows)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
