"""Per-site CI statistics over the eval batches for the figure tier (S14.7): histograms of
ci_lower and of the CI pre-activations, how often each component is active, its mean CI.

Accumulated batch by batch (counts and sums, never the full CI arrays on the host), so an LM
with millions of eval tokens and thousands of components per site costs O(bins + C) memory.
The number of components is read from each site's CI array, so sites may differ in C.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.decomposition.masked_forward import clean_forward

CI_BINS = 50  # ci_lower lies in [0, 1] (S3.1): 50 bins of width 0.02
PRE_BINS = 60
_SUMMED = ("ci", "active", "sum", "n")  # per-batch counts added up in the first pass


@dataclass(frozen=True)
class SiteCIStats:
    """One site's statistics over n_inputs inputs (tokens for LMs, samples for toys)."""

    n_inputs: int
    ci_counts: Int[np.ndarray, " bins"]  # (input, component) pairs per ci_lower bin
    ci_edges: Float[np.ndarray, " bins_plus_1"]
    pre_counts: Int[np.ndarray, " bins"]  # (input, component) pairs per pre-activation bin
    pre_edges: Float[np.ndarray, " bins_plus_1"]
    active_counts: Int[np.ndarray, " C"]  # inputs where ci_lower > threshold, per component
    ci_sums: Float[np.ndarray, " C"]  # sum of ci_lower over the inputs, per component

    @property
    def n_components(self) -> int:
        return int(self.active_counts.shape[0])

    @property
    def density(self) -> Float[np.ndarray, " C"]:
        """Fraction of inputs on which each component is active (CI above the threshold)."""
        return self.active_counts / self.n_inputs

    @property
    def mean_ci(self) -> Float[np.ndarray, " C"]:
        return self.ci_sums / self.n_inputs


def _ci_and_pre(
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    params: nnx.State,
    target_state: nnx.State,
    x: Array,
) -> tuple[dict[str, Array], dict[str, Array]]:
    """(ci_lower, pre-activations) of every site, each flattened to (positions, C_site)."""
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    _, record = clean_forward(target, x, model.site_names)
    VU = model.all_VU()
    pre = model.ci_pre_activations(record.inputs, VU)
    lower, _ = model.causal_importances(record.inputs, VU)  # same pre-activations: XLA CSEs them
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    return {s: flat(c) for s, c in lower.items()}, {s: flat(p) for s, p in pre.items()}


@partial(jax.jit, static_argnames=("graphdef", "target_graphdef"))
def ci_rows(
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    params: nnx.State,
    target_state: nnx.State,
    x: Array,
) -> dict[str, Float[Array, "positions C"]]:
    """ci_lower of every site on x, flattened to (positions, C_site)."""
    return _ci_and_pre(graphdef, target_graphdef, params, target_state, x)[0]


def _bin_counts(values: Array, lo: Array, hi: Array, n_bins: int) -> Array:
    """Counts of values in n_bins equal bins of [lo, hi]; the top edge goes to the last bin."""
    idx = jnp.floor((values - lo) / (hi - lo) * n_bins).astype(jnp.int32)
    return jnp.bincount(jnp.clip(idx, 0, n_bins - 1).ravel(), length=n_bins)


@partial(jax.jit, static_argnames=("graphdef", "target_graphdef", "threshold"))
def _batch_counts(
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    threshold: float,
    params: nnx.State,
    target_state: nnx.State,
    x: Array,
    pre_ranges: dict[str, Array],
) -> dict[str, dict[str, Array]]:
    """One batch's counts per site, the pre-activation histogram over `pre_ranges`, and the
    batch's pre-activation range: one program serves both passes of `ci_statistics`."""
    ci, pre = _ci_and_pre(graphdef, target_graphdef, params, target_state, x)
    out: dict[str, dict[str, Array]] = {}
    for s in ci:
        lo, hi = pre_ranges[s][0], pre_ranges[s][1]
        out[s] = {
            "ci": _bin_counts(ci[s], 0.0, 1.0, CI_BINS),
            "pre": _bin_counts(pre[s], lo, hi, PRE_BINS),
            "active": jnp.sum((ci[s] > threshold).astype(jnp.int32), axis=0),
            "sum": jnp.sum(ci[s], axis=0),
            "n": jnp.asarray(ci[s].shape[0], jnp.int32),
            "range": jnp.stack([jnp.min(pre[s]), jnp.max(pre[s])]),
        }
    return out


def ci_statistics(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    batches: list[Array],
    threshold: float,
) -> dict[str, SiteCIStats]:
    """The statistics of every site over `batches` (S14.7). The first pass counts everything
    but the pre-activation histogram and finds each site's pre-activation range; the second
    bins the pre-activations over it. Counts are summed in int64 on the host."""
    if not batches:
        raise ValueError("the figure tier needs at least one eval batch")

    def counts(x: Array, ranges: dict[str, Array]) -> dict[str, dict[str, np.ndarray]]:
        return jax.device_get(
            _batch_counts(graphdef, target_graphdef, threshold, params, target_state, x, ranges)
        )

    sites = nnx.merge(graphdef, params).site_names
    placeholder = {s: jnp.asarray([0.0, 1.0], jnp.float32) for s in sites}  # pass 1: unused
    totals: dict[str, dict[str, np.ndarray]] = {}
    ranges: dict[str, np.ndarray] = {}
    for x in batches:
        for s, c in counts(x, placeholder).items():
            c64 = {k: np.asarray(c[k], np.float64 if k == "sum" else np.int64) for k in _SUMMED}
            totals[s] = c64 if s not in totals else {k: totals[s][k] + c64[k] for k in _SUMMED}
            lo, hi = np.asarray(c["range"], np.float64)
            old = ranges.get(s, np.array([np.inf, -np.inf]))
            ranges[s] = np.array([min(old[0], lo), max(old[1], hi)])
    for s, (lo, hi) in ranges.items():
        if not hi > lo:  # a constant pre-activation still gets a bin around it
            ranges[s] = np.array([lo - 0.5, hi + 0.5])
    device_ranges = {s: jnp.asarray(r, jnp.float32) for s, r in ranges.items()}
    pre_counts = {s: np.zeros(PRE_BINS, np.int64) for s in ranges}
    for x in batches:
        for s, c in counts(x, device_ranges).items():
            pre_counts[s] += np.asarray(c["pre"], np.int64)
    return {
        s: SiteCIStats(
            n_inputs=int(t["n"]),
            ci_counts=t["ci"],
            ci_edges=np.linspace(0.0, 1.0, CI_BINS + 1),
            pre_counts=pre_counts[s],
            pre_edges=np.linspace(float(ranges[s][0]), float(ranges[s][1]), PRE_BINS + 1),
            active_counts=t["active"],
            ci_sums=t["sum"],
        )
        for s, t in totals.items()
    }
