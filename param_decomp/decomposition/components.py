"""Rank-one components of one site and the decomposed linear map (SPEC S1, S2).

Layout: V is (d_in, C), U is (C, d_out) and the site weight W is (d_in, d_out), so the
component weight is V @ U and the delta channel carries x @ (W - V @ U), computed as
delta * (x W - (x V) U) so that x V and x W can be shared (S9.4).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from param_decomp.targets.base import site_product


def component_acts(x: Float[Array, "*b d_in"], V: Float[Array, "d_in C"]) -> Float[Array, "*b C"]:
    """Inner activations x . V[:, c]: what each component reads from the input (token ids
    read V's rows)."""
    return site_product(x, V)


def stochastic_mask(ci: Float[Array, "*b C"], source: Float[Array, "*b C"]) -> Float[Array, "*b C"]:
    """mask = ci + (1 - ci) * source (S2.1): ci = 1 keeps a component, ci = 0 leaves it random."""
    return ci + (1.0 - ci) * source


def masked_product_sum(
    acts: Float[Array, "*b C"],
    U: Float[Array, "C d_out"],
    mask: Float[Array, "*b C"],
    xw: Float[Array, "*b d_out"] | None = None,
    delta_mask: Float[Array, "*b"] | None = None,
    routed: Bool[Array, "*b"] | None = None,
) -> Float[Array, "*b d_out"]:
    """The masked site output from the mask-independent products acts = x V and xw = x W (S2.2).

    ((x V) * (mask - delta)) U + delta * (x W) equals ((x V) * mask) U + delta * x (W - V U) in
    exact arithmetic, without forming W - V U: the only product left that depends on the mask is
    the (C, d_out) one. Positions not routed to the site (S2.3) take x W, folded in as a zero
    component coefficient and a unit weight on x W, so routing costs no extra product.
    """
    coeff = mask if delta_mask is None else mask - delta_mask[..., None]
    xw_weight = delta_mask
    if routed is not None:
        coeff = jnp.where(routed[..., None], coeff, 0.0)
        routed_weight = 0.0 if delta_mask is None else delta_mask
        xw_weight = jnp.where(routed, routed_weight, 1.0)
    if coeff.dtype != acts.dtype:  # S15.6: bf16 operands; the mask arithmetic above is fp32
        coeff = coeff.astype(acts.dtype)
    out = (acts * coeff) @ U
    if xw_weight is not None:
        if xw is None:
            raise ValueError("the delta channel and routing need the site's clean product x @ W")
        if xw_weight.dtype != xw.dtype:
            xw_weight = xw_weight.astype(xw.dtype)
        out = out + xw_weight[..., None] * xw
    return out


def decomposed_linear(
    x: Float[Array, "*b d_in"],
    V: Float[Array, "d_in C"],
    U: Float[Array, "C d_out"],
    mask: Float[Array, "*b C"],
    W: Float[Array, "d_in d_out"] | None = None,
    delta_mask: Float[Array, "*b"] | None = None,
) -> Float[Array, "*b d_out"]:
    """((x @ V) * mask) @ U, plus delta_mask * x @ (W - V @ U) when the delta channel is on (S2.2),
    evaluated from the products x V and x W (`masked_product_sum`)."""
    if delta_mask is not None and W is None:
        raise ValueError("the delta channel needs the site weight W")
    xw = x @ W if delta_mask is not None else None
    return masked_product_sum(component_acts(x, V), U, mask, xw, delta_mask)


def faithfulness_sq_error(
    W: Float[Array, "d_in d_out"], V: Float[Array, "d_in C"], U: Float[Array, "C d_out"]
) -> Float[Array, ""]:
    """||W - V U||_F^2 in fp32; faithfulness divides the sum over sites by total numel (S4.1)."""
    diff = W.astype(jnp.float32) - V @ U
    return jnp.sum(diff * diff)
