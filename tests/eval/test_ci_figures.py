"""The figure tier's statistics and plots (SPEC S14.7) on a random tiny TMS decomposition and
on synthetic statistics with a different C per site."""

from pathlib import Path

import jax
import numpy as np
import pytest
from figure_checks import png_text
from flax import nnx

from param_decomp.config.loading import load_target_config
from param_decomp.data.sources import SparseFeatureSource
from param_decomp.decomposition.masked_forward import clean_forward
from param_decomp.eval.ci_figures import (
    plot_activation_density,
    plot_ci_histograms,
    plot_mean_ci,
    plot_pre_activation_histograms,
)
from param_decomp.eval.ci_stats import CI_BINS, PRE_BINS, SiteCIStats, ci_statistics
from param_decomp.jobs.decompose import new_decomposition
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.targets.build import build_target

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def tiny(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[nnx.GraphDef, nnx.State, nnx.GraphDef, nnx.State, list[jax.Array]]:
    """A random-init TMS 5-2 target and decomposition (no training needed for the maths)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        cfg = load_decompose_config(FIXTURES / "tms_tiny.yaml")
        target_cfg = load_target_config(FIXTURES / "tms_tiny_target.yaml")
    target = build_target(target_cfg)
    graphdef, params = nnx.split(new_decomposition(cfg, target))
    target_graphdef, target_state = nnx.split(target)
    source = SparseFeatureSource(target_cfg.data, target.n_features, 64, 0)
    return graphdef, params, target_graphdef, target_state, source.eval_batches(3, 64)


def test_s14_7_statistics_match_direct_numpy(tiny) -> None:  # noqa: ANN001
    """Histograms, density and mean CI of ci_statistics equal numpy on the full CI arrays."""
    graphdef, params, target_graphdef, target_state, batches = tiny
    threshold = 0.1
    stats = ci_statistics(graphdef, params, target_graphdef, target_state, batches, threshold)
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    lower: dict[str, list[np.ndarray]] = {}
    pre: dict[str, list[np.ndarray]] = {}
    for x in batches:
        _, record = clean_forward(target, x, model.site_names)
        VU = model.all_VU()
        for s, p in model.ci_pre_activations(record.inputs, VU).items():
            pre.setdefault(s, []).append(np.asarray(p).reshape(-1, p.shape[-1]))
            lower.setdefault(s, []).append(np.clip(pre[s][-1], 0.0, 1.0))  # S3.1
    assert set(stats) == set(model.site_names)
    for s, st in stats.items():
        ci, pa = np.concatenate(lower[s]), np.concatenate(pre[s])
        assert st.n_inputs == ci.shape[0] == 3 * 64
        assert st.n_components == ci.shape[1]
        np.testing.assert_array_equal(st.active_counts, (ci > threshold).sum(0))
        np.testing.assert_allclose(st.mean_ci, ci.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(st.density, (ci > threshold).mean(0))
        assert st.ci_counts.sum() == ci.size and st.pre_counts.sum() == pa.size
        assert len(st.ci_counts) == CI_BINS and len(st.pre_counts) == PRE_BINS
        assert st.pre_edges[0] == pytest.approx(pa.min()) and st.pre_edges[-1] == pytest.approx(
            pa.max()
        )
        expected_ci, _ = np.histogram(ci, bins=st.ci_edges)
        np.testing.assert_array_equal(st.ci_counts, expected_ci)
        expected_pre, _ = np.histogram(pa, bins=st.pre_edges)
        # a value on a bin edge may land either side (float32 on device, float64 here)
        assert np.abs(st.pre_counts - expected_pre).sum() <= 4, (st.pre_counts, expected_pre)


def test_s14_7_statistics_need_a_batch(tiny) -> None:  # noqa: ANN001
    graphdef, params, target_graphdef, target_state, _ = tiny
    with pytest.raises(ValueError, match="at least one eval batch"):
        ci_statistics(graphdef, params, target_graphdef, target_state, [], 0.1)


def _synthetic(C: int, seed: int, dead: int) -> SiteCIStats:
    """Statistics of C components on 100 inputs, the last `dead` never active."""
    rng = np.random.default_rng(seed)
    active = rng.integers(1, 100, size=C)
    active[C - dead :] = 0
    return SiteCIStats(
        n_inputs=100,
        ci_counts=rng.integers(0, 50, size=CI_BINS),
        ci_edges=np.linspace(0, 1, CI_BINS + 1),
        pre_counts=rng.integers(0, 50, size=PRE_BINS),
        pre_edges=np.linspace(-2, 3, PRE_BINS + 1),
        active_counts=active,
        ci_sums=active * 0.5,
    )


def test_s14_7_plots_say_what_they_show_with_per_site_C(tmp_path: Path) -> None:
    """One panel per site, each with its own C (5 and 12) in its title; axes name the CI
    quantity and the unit; a site with no active component still draws."""
    stats = {"layers.0.up": _synthetic(5, 0, 2), "layers.0.down": _synthetic(12, 1, 0)}
    stats["all_dead"] = _synthetic(3, 2, 3)
    t, d = png_text(plot_ci_histograms(stats, tmp_path / "h.png", "tokens", "step 7"))
    assert "Histogram of causal importances" in t and "step 7" in t
    assert "layers.0.up: 100 tokens x 5 components" in d
    assert "layers.0.down: 100 tokens x 12 components" in d
    assert "x: ci_lower" in d and "y: count of (input, component) pairs, log" in d
    t, d = png_text(plot_pre_activation_histograms(stats, tmp_path / "p.png", "tokens", "s"))
    assert "CI pre-activations" in t and "x: CI pre-activation (before squashing" in d
    t, d = png_text(plot_activation_density(stats, tmp_path / "a.png", "tokens", 0.1, "s"))
    assert "activation density" in t and "ci_lower > 0.1" in t
    assert "layers.0.up: 5 components on 100 tokens\n2 never above 0.1" in d
    assert "all_dead: 3 components on 100 tokens\n3 never above 0.1" in d
    assert "y: fraction of tokens with ci_lower > 0.1, log" in d
    assert "x: component rank (sorted by value, descending)" in d
    t, d = png_text(plot_mean_ci(stats, tmp_path / "m.png", "samples", "s"))
    assert "Mean causal importance per component" in t
    assert "y: mean ci_lower over samples, log" in d and "layers.0.down: 12 components" in d


def test_s14_7_mean_ci_of_a_ci_of_ones() -> None:
    """A direct check of the derived quantities."""
    st = SiteCIStats(
        4,
        np.zeros(CI_BINS, np.int64),
        np.linspace(0, 1, CI_BINS + 1),
        np.zeros(PRE_BINS, np.int64),
        np.linspace(0, 1, PRE_BINS + 1),
        np.array([4, 0, 2]),
        np.array([4.0, 0.0, 1.0]),
    )
    np.testing.assert_allclose(st.density, [1.0, 0.0, 0.5])
    np.testing.assert_allclose(st.mean_ci, [1.0, 0.0, 0.25])
    assert st.n_components == 3
