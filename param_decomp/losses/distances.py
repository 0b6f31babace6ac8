"""Distances between a masked (decomposed) model output and the clean target output.

These are the reconstruction distances of the SPD objective: MSE for toy models whose outputs
are real vectors, and per-position KL for language models whose outputs are logits. All
reductions run in at least float32 so bf16 activations do not lose the small differences the
reconstruction losses are meant to measure.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _upcast(x: Array) -> Array:
    """Promote to at least float32 (keeps float64 when x64 is enabled)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def mse(masked: Float[Array, "... d"], clean: Float[Array, "... d"]) -> Float[Array, ""]:
    """Mean over every element of (masked - clean)^2: the toy-model reconstruction distance."""
    diff = _upcast(masked) - _upcast(clean)
    return jnp.mean(jnp.square(diff))


def kl_per_position_mean(
    masked_logits: Float[Array, "... vocab"], clean_logits: Float[Array, "... vocab"]
) -> Float[Array, ""]:
    """Mean over positions of KL(softmax(clean) || softmax(masked)).

    The clean model is the reference distribution, so the KL is taken in that direction; the
    sum over the vocabulary is per position, the mean over every leading (batch/pos) axis.
    Computed from log_softmax so large logits neither overflow nor lose precision.
    """
    log_p_masked = jax.nn.log_softmax(_upcast(masked_logits), axis=-1)
    log_p_clean = jax.nn.log_softmax(_upcast(clean_logits), axis=-1)
    p_clean = jnp.exp(log_p_clean)
    kl_per_position = jnp.sum(p_clean * (log_p_clean - log_p_masked), axis=-1)
    return jnp.mean(kl_per_position)


OutputDistance = Callable[[Array, Array], Array]

OUTPUT_DISTANCES: dict[str, OutputDistance] = {
    "mse": mse,
    "kl": kl_per_position_mean,
}
