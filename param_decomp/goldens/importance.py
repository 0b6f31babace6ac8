"""Golden families for importance minimality (legacy rolled form via migration) and smooth-L0."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from param_decomp.goldens.registry import Case, Comparison, as_array, compare_tree, register_family
from param_decomp.losses.importance import (
    PNormPsi,
    SmoothL0Psi,
    activity,
    component_means,
    frequency,
)


def _ci(case: Case) -> dict[str, jax.Array]:
    return {s: jnp.asarray(as_array(v), jnp.float32) for s, v in case["inputs"]["ci_upper"].items()}


def _means(psi: object, ci: dict[str, jax.Array], progress: float) -> dict[str, jax.Array]:
    return {s: component_means(psi(c, jnp.asarray(progress, jnp.float32))) for s, c in ci.items()}


def migrated_legacy_loss(
    ci: dict[str, jax.Array], psi: PNormPsi, progress: float, beta: float, bt: float
) -> jax.Array:
    """Legacy rolled value via the migration: lp + beta * freq at a' = B*T (S8.4)."""
    f = _means(psi, ci, progress)
    return activity(f) + beta * frequency(f, bt)


@register_family("imp_min")
def imp_min(case: Case) -> list[Comparison]:
    i = case["inputs"]
    ci = _ci(case)
    p_final = None if i["p_final"] is None else float(i["p_final"])
    psi = PNormPsi(float(i["p_start"]), p_final, 0.0, 1.0, float(i["eps"]))
    frac, beta, bt = (
        float(i["frac_of_training"]),
        float(i["beta"]),
        float(i["global_batch_positions"]),
    )
    loss, grad = jax.value_and_grad(lambda c: migrated_legacy_loss(c, psi, frac, beta, bt))(ci)
    got = {"loss": loss, "effective_p": psi.p(jnp.asarray(frac)), "grad_ci_upper": grad}
    return compare_tree("", got, case["expected"])


@register_family("smooth_l0_frequency")
def smooth_l0_frequency(case: Case) -> list[Comparison]:
    i = case["inputs"]
    ci = _ci(case)
    if "gamma" in i:
        psi: object = SmoothL0Psi(float(i["gamma"]), None, 0.0, 1.0, bool(i["normalize_at_one"]))
    else:
        psi = PNormPsi(float(i["pnorm"]), None, 0.0, 1.0, float(i["eps"]))
    a_ref = float(i["reference_token_count"])
    lp, grad_lp = jax.value_and_grad(lambda c: activity(_means(psi, c, 0.0)))(ci)
    freq, grad_freq = jax.value_and_grad(lambda c: frequency(_means(psi, c, 0.0), a_ref))(ci)
    got = {"lp": lp, "freq": freq, "grad_lp": grad_lp, "grad_freq": grad_freq}
    return compare_tree("", {k: got[k] for k in case["expected"]}, case["expected"])
