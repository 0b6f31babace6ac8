"""Synthetic sparse-feature batches for the toy targets (SPEC §Data), generated on device.

Generation is a pure function of the key, so a batch is identical whatever the device layout
(threefry is partitionable) and can be drawn inside the jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from param_decomp.config.schema import SparseFeatureData


def sample_sparse_features(
    key: PRNGKeyArray, batch_size: int, n_features: int, cfg: SparseFeatureData
) -> Float[Array, "batch n_features"]:
    """Each row: features present per `cfg.mode`, present values uniform in `cfg.value_range`."""
    k_val, k_on = jax.random.split(key)
    lo, hi = cfg.value_range
    values = jax.random.uniform(k_val, (batch_size, n_features), minval=lo, maxval=hi)
    if cfg.mode == "at_least_zero_active":
        present = jax.random.bernoulli(k_on, cfg.feature_probability, (batch_size, n_features))
    else:
        n_active = {"exactly_one_active": 1, "exactly_two_active": 2}[cfg.mode]
        scores = jax.random.uniform(k_on, (batch_size, n_features))
        ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
        present = ranks < n_active
    return jnp.where(present, values, 0.0).astype(jnp.float32)


def one_feature_inputs(
    n_features: int, value: float = 1.0
) -> Float[Array, "n_features n_features"]:
    """Row i has only feature i set to `value`: the eval inputs for the per-feature CI matrix."""
    return value * jnp.eye(n_features, dtype=jnp.float32)
