"""Gradient accumulation over micro-batches of the global batch (SPEC S10.4).

`train.micro_batches: k` runs the step's differentiated pass on k micro-batches in a
`jax.lax.scan`, so only one micro-batch's activations are live at a time, and hands the mean
gradient to ONE optimizer update. Micro-batch m is the rows i with i mod k == m: the batch is
block-sharded over the batch mesh axes, so a strided split keeps every micro-batch spread over
all devices (a contiguous one would put micro-batch 0 on the first devices alone).

Every loss but the frequency part is a mean over the batch, so the mean over equal micro-batches
is the full-batch value. The frequency part is nonlinear in the component means f, so a first
pass computes the global f (clean forward and CI only) and each micro-batch's pass reads
f_m + stop_gradient(f_global - f_m): the value is the global one and the gradient averaged over
micro-batches is g'(f_global) mean_m grad f_m, the full batch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, PRNGKeyArray

from param_decomp.config.schema import ComputeDtype
from param_decomp.losses.base import PsiSpec
from param_decomp.objective import Objective

# each of the objective's psi specs' {site: f}, in `objective.psi_specs` order (a tuple, since
# a psi spec is no pytree key JAX can sort)
GlobalMeans = tuple[dict[str, Array], ...]
# (params, micro-batch, its key, the global component means or None) -> (grads, metrics)
MicroGrad = Callable[[nnx.State, Array, PRNGKeyArray, GlobalMeans | None], tuple[Any, Any]]


def split_micro_batches(batch: Array, k: int) -> Array:
    """(B, ...) -> (k, B / k, ...) with micro-batch m = rows {i : i mod k == m}."""
    rows = batch.shape[0]
    if rows % k:
        raise ValueError(f"batch of {rows} rows does not split into {k} micro-batches")
    return jnp.moveaxis(batch.reshape(rows // k, k, *batch.shape[1:]), 1, 0)


def pin_to_global(
    objective: Objective,
    local: dict[PsiSpec, dict[str, Array]],
    global_means: GlobalMeans,
) -> dict[PsiSpec, dict[str, Array]]:
    """f_m + stop_gradient(f_global - f_m): the global value with the micro-batch's gradient."""
    sg = jax.lax.stop_gradient
    return {
        psi: {s: f + sg(global_f[s] - f) for s, f in local[psi].items()}
        for psi, global_f in zip(objective.psi_specs, global_means, strict=True)
    }


def global_component_means(
    objective: Objective,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    params: nnx.State,
    target_state: nnx.State,
    micro: Array,
    progress: Array,
    compute_dtype: ComputeDtype,
) -> GlobalMeans | None:
    """The global batch's component means from a scan over the (equal-sized) micro-batches:
    the mean of their means. None when no term reads them."""
    if not objective.psi_specs:
        return None
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)

    def means(_: None, x: Array) -> tuple[None, GlobalMeans]:
        by_psi = objective.global_component_means(target, model, x, progress, compute_dtype)
        return None, tuple(by_psi[psi] for psi in objective.psi_specs)

    _, stacked = jax.lax.scan(means, None, micro)
    return jax.tree.map(lambda f: jnp.mean(f, axis=0), stacked)


def accumulated_grads(
    micro_grad: MicroGrad,
    params: nnx.State,
    micro: Array,
    key: PRNGKeyArray,
    global_means: GlobalMeans | None,
) -> tuple[Any, dict[str, Array]]:
    """The mean gradient and mean metrics over the micro-batches (axis 0 of `micro`); micro-batch
    m's sources come from fold_in(key, m)."""
    k = micro.shape[0]

    def body(total: Any, xs: tuple[Array, Array]) -> tuple[Any, dict[str, Array]]:
        m, x = xs
        grads, metrics = micro_grad(params, x, jax.random.fold_in(key, m), global_means)
        return jax.tree.map(jnp.add, total, grads), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, metrics = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    grads = jax.tree.map(lambda g: g / k, total)
    return grads, jax.tree.map(lambda v: jnp.mean(v, axis=0), metrics)
