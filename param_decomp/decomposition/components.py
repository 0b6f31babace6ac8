"""Rank-one components of one site and the decomposed linear map (SPEC S1, S2).

Layout: V is (d_in, C), U is (C, d_out) and the site weight W is (d_in, d_out), so the
component weight is V @ U and the delta channel carries x @ (W - V @ U).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def component_acts(x: Float[Array, "*b d_in"], V: Float[Array, "d_in C"]) -> Float[Array, "*b C"]:
    """Inner activations x . V[:, c]: what each component reads from the input."""
    return x @ V


def stochastic_mask(ci: Float[Array, "*b C"], source: Float[Array, "*b C"]) -> Float[Array, "*b C"]:
    """mask = ci + (1 - ci) * source (S2.1): ci = 1 keeps a component, ci = 0 leaves it random."""
    return ci + (1.0 - ci) * source


def decomposed_linear(
    x: Float[Array, "*b d_in"],
    V: Float[Array, "d_in C"],
    U: Float[Array, "C d_out"],
    mask: Float[Array, "*b C"],
    W: Float[Array, "d_in d_out"] | None = None,
    delta_mask: Float[Array, "*b"] | None = None,
) -> Float[Array, "*b d_out"]:
    """((x @ V) * mask) @ U, plus delta_mask * x @ (W - V @ U) when the delta channel is on (S2.2).

    The delta weight is formed from V and U so its gradient reaches the components.
    """
    out = (component_acts(x, V) * mask) @ U
    if delta_mask is not None:
        if W is None:
            raise ValueError("the delta channel needs the site weight W")
        out = out + delta_mask[..., None] * (x @ (W - V @ U))
    return out


def faithfulness_sq_error(
    W: Float[Array, "d_in d_out"], V: Float[Array, "d_in C"], U: Float[Array, "C d_out"]
) -> Float[Array, ""]:
    """||W - V U||_F^2 in fp32; faithfulness divides the sum over sites by total numel (S4.1)."""
    diff = W.astype(jnp.float32) - V @ U
    return jnp.sum(diff * diff)
