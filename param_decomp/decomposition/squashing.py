"""Leaky-hard squashings that turn CI pre-activations into causal importances (SPEC S3).

Boundary conventions are pinned explicitly with custom VJPs because `jnp.clip` splits the
gradient 50/50 at ties, which the reference does not do:
- lower: forward clip(x, 0, 1); backward passes the gradient on (0, 1], and on x <= 0 leaks
  alpha * g only when the upstream gradient g is negative (i.e. the loss wants x to grow).
- upper: forward 0 below 0, x on [0, 1], 1 + alpha (x - 1) above 1; gradient 1 on [0, 1].
- leaky: forward alpha x below 0 (x = 0 included), clip at 1 above; gradient alpha on x <= 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def lower_leaky_hard(x: Float[Array, "*s"], alpha: float) -> Float[Array, "*s"]:
    """CI used for masks: exactly in [0, 1] (S3.1)."""
    return jnp.clip(x, 0.0, 1.0)


def _lower_fwd(x: Array, alpha: float) -> tuple[Array, Array]:
    return lower_leaky_hard(x, alpha), x


def _lower_bwd(alpha: float, x: Array, g: Array) -> tuple[Array]:
    inside = (x > 0.0) & (x <= 1.0)
    leak = (x <= 0.0) & (g < 0.0)
    return (jnp.where(inside, g, jnp.where(leak, alpha * g, 0.0)),)


lower_leaky_hard.defvjp(_lower_fwd, _lower_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def upper_leaky_hard(x: Float[Array, "*s"], alpha: float) -> Float[Array, "*s"]:
    """CI used for importance minimality: may exceed 1 slightly so it keeps a gradient (S3.2)."""
    return jnp.where(x > 1.0, 1.0 + alpha * (x - 1.0), jnp.maximum(x, 0.0))


def _upper_fwd(x: Array, alpha: float) -> tuple[Array, Array]:
    return upper_leaky_hard(x, alpha), x


def _upper_bwd(alpha: float, x: Array, g: Array) -> tuple[Array]:
    return (jnp.where(x > 1.0, alpha * g, jnp.where(x >= 0.0, g, 0.0)),)


upper_leaky_hard.defvjp(_upper_fwd, _upper_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def leaky_hard(x: Float[Array, "*s"], alpha: float) -> Float[Array, "*s"]:
    """Two-sided leaky clamp (S3.3)."""
    return jnp.where(x > 0.0, jnp.minimum(x, 1.0), alpha * x)


def _leaky_fwd(x: Array, alpha: float) -> tuple[Array, Array]:
    return leaky_hard(x, alpha), x


def _leaky_bwd(alpha: float, x: Array, g: Array) -> tuple[Array]:
    return (jnp.where(x > 1.0, 0.0, jnp.where(x > 0.0, g, alpha * g)),)


leaky_hard.defvjp(_leaky_fwd, _leaky_bwd)

SQUASHINGS = {
    "lower_leaky_hard": lower_leaky_hard,
    "upper_leaky_hard": upper_leaky_hard,
    "leaky_hard": leaky_hard,
}
