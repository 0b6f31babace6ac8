"""Ablation effects through the whole network: one component removed at one position, and the
next-token distribution there compared before and after (`param-decomp ablate`).

The decomposed model runs with every component's mask at 1 and the delta channel at 1, so every
site computes ((x V) * (1 - 1)) U + x W = x W: the target's own forward, exactly (the masked
product adds zeros). Ablating component c of site s at position p sets its mask there to 0,
which leaves x W - (x . V[:, c]) U[c] at (s, p) and changes nothing else directly; every later
layer and position then runs on the changed residual. CI enters only through the choice of
contexts (where c fires), never the forward, so "before" is the target's own prediction.

One row of a batch is one ablation (sequence, component, position) of one site. The forward is
the decomposition's masked forward (`decomposition/masked_forward.masked_site_fn`) with that
site alone live: upstream of it the recorded clean outputs are reused, and sites other than the
live one run x W, which is what their all-ones mask with the delta channel computes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.schema import ComputeDtype
from param_decomp.decomposition.components import component_acts
from param_decomp.decomposition.masked_forward import clean_forward, masked_site_fn
from param_decomp.targets.precision import at_least_float32, compute_cast, module_in_dtype

AblationOut = tuple[Float[Array, " b"], Float[Array, " b"], Float[Array, "b vocab"]]


def ablation_effects(
    target: Any,
    model: Any,
    site: str,
    x: Int[Array, "b t"],
    component: Int[Array, " b"],
    position: Int[Array, " b"],
    next_token: Int[Array, " b"],
    compute_dtype: ComputeDtype = "float32",
) -> AblationOut:
    """Per row: (log p_after - log p_before of `next_token` at `position` (0 where it is -1),
    KL(p_before || p_after) there, log p_after - log p_before of every token there)."""
    compute_target = module_in_dtype(target, compute_dtype)
    compute_x = compute_cast(x, compute_dtype)
    clean, record = clean_forward(compute_target, compute_x, model.site_names)
    V, U = compute_cast(model.all_VU()[site], compute_dtype)
    acts = component_acts(record.inputs[site], V)
    rows = jnp.arange(x.shape[0])
    mask = jnp.ones(acts.shape, jnp.float32).at[rows, position, component].set(0.0)
    forward = {
        "mask_source": {site: jnp.zeros_like(mask)},  # mask = ci + (1 - ci) * 0 = the mask
        "delta_source": {site: jnp.ones(mask.shape[:-1], jnp.float32)},
        "routed": None,
    }
    site_fn = masked_site_fn(
        (site,), {site: (V, U)}, {site: mask}, forward, True, record, {site: acts}
    )
    after = at_least_float32(compute_target(compute_x, site_fn))[rows, position]
    before = at_least_float32(clean)[rows, position]
    log_before = jax.nn.log_softmax(before, axis=-1)
    delta = jax.nn.log_softmax(after, axis=-1) - log_before
    kl = -jnp.sum(jnp.exp(log_before) * delta, axis=-1)
    picked = jnp.take_along_axis(delta, jnp.maximum(next_token, 0)[:, None], axis=-1)[:, 0]
    return jnp.where(next_token >= 0, picked, 0.0), kl, delta


def make_ablation_step(
    site: str,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    compute_dtype: ComputeDtype = "float32",
    out_sharding: Any = None,
) -> Any:
    """`step(params, target_state, x, component, position, next_token) -> AblationOut` for the
    ablations of one site, jitted (one program per site: the live site is static)."""

    def step(
        params: nnx.State,
        target_state: nnx.State,
        x: Array,
        component: Array,
        position: Array,
        next_token: Array,
    ) -> AblationOut:
        model = nnx.merge(graphdef, params)
        target = nnx.merge(target_graphdef, target_state)
        return ablation_effects(
            target, model, site, x, component, position, next_token, compute_dtype
        )

    out = None if out_sharding is None else (out_sharding,) * 3
    return jax.jit(step, out_shardings=out)
