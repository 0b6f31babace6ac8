"""Language-model training objectives as pure JAX functions of logits and integer targets.

Everything is built on one per-position cross entropy so that the variants (focal,
bytes-weighted, label smoothing, z-loss, bits per byte) agree with plain CE exactly where they
should. Math runs in at least float32 whatever the logits' dtype, because log-softmax and the
mean over many positions lose too much precision in bf16.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _upcast(x: Array) -> Array:
    """Promote to at least float32 (keeps float64 when x64 is enabled)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def token_cross_entropy(
    logits: Float[Array, "batch pos vocab"], targets: Int[Array, "batch pos"]
) -> Float[Array, "batch pos"]:
    """Per-position -log softmax(logits)[target]; the building block of every objective here."""
    log_probs = jax.nn.log_softmax(_upcast(logits), axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return -target_log_probs


def cross_entropy(
    logits: Float[Array, "batch pos vocab"], targets: Int[Array, "batch pos"]
) -> Float[Array, ""]:
    """Mean next-token cross entropy over all positions."""
    return jnp.mean(token_cross_entropy(logits, targets))


def focal(
    logits: Float[Array, "batch pos vocab"],
    targets: Int[Array, "batch pos"],
    gamma: float | Float[Array, ""],
) -> Float[Array, ""]:
    """Focal loss mean((1 - p_target)^gamma * ce): down-weights tokens already predicted well.

    p_target = exp(-ce), and 1 - p_target is computed as -expm1(-ce) to stay accurate when ce is
    small. gamma = 0 is plain CE exactly (0**0 = 1). Where 1 - p_target is 0 the weight is fixed
    to 0 (or 1 for gamma = 0) through a safe base, so the pow's derivative never sees 0^(gamma-1)
    and gradients stay finite as ce -> 0.
    """
    if isinstance(gamma, (int, float)) and gamma == 0:
        return cross_entropy(logits, targets)
    ce = token_cross_entropy(logits, targets)
    one_minus_p = -jnp.expm1(-ce)
    positive = one_minus_p > 0
    safe_base = jnp.where(positive, one_minus_p, jnp.ones_like(one_minus_p))
    gamma_arr = jnp.asarray(gamma, dtype=ce.dtype)
    weight_at_zero = jnp.where(gamma_arr == 0, 1.0, 0.0).astype(ce.dtype)
    weight = jnp.where(positive, safe_base**gamma_arr, weight_at_zero)
    return jnp.mean(weight * ce)


def poly1(
    logits: Float[Array, "batch pos vocab"],
    targets: Int[Array, "batch pos"],
    epsilon: float | Float[Array, ""] = 1.0,
) -> Float[Array, ""]:
    """Poly-1 loss mean(ce + epsilon * (1 - p_target)) (Leng et al., 2022): CE plus the first
    term of its polynomial expansion, re-weighted. 1 - p_target is -expm1(-ce) (accurate for
    small ce); epsilon = 0 is CE exactly."""
    ce = token_cross_entropy(logits, targets)
    return jnp.mean(ce + jnp.asarray(epsilon, ce.dtype) * -jnp.expm1(-ce))


def bytes_weighted_cross_entropy(
    logits: Float[Array, "batch pos vocab"],
    targets: Int[Array, "batch pos"],
    bytes_per_token: Int[Array, " vocab"],
) -> Float[Array, ""]:
    """Cross entropy weighted by the target token's byte length: sum(ce * w) / sum(w).

    Weighting by bytes makes the loss comparable across tokenizers; w = max(bytes, 1) so
    zero-byte (special) tokens still count once rather than vanishing.
    """
    ce = token_cross_entropy(logits, targets)
    weights = jnp.maximum(_upcast(jnp.asarray(bytes_per_token)[targets]), 1).astype(ce.dtype)
    return jnp.sum(ce * weights) / jnp.sum(weights)


def z_loss(logits: Float[Array, "batch pos vocab"], coeff: float) -> Float[Array, ""]:
    """coeff * mean(logsumexp(logits)^2): keeps the softmax normaliser near 1 for stability."""
    log_normaliser = jax.nn.logsumexp(_upcast(logits), axis=-1)
    return coeff * jnp.mean(jnp.square(log_normaliser))


def label_smoothing_cross_entropy(
    logits: Float[Array, "batch pos vocab"],
    targets: Int[Array, "batch pos"],
    smoothing: float,
) -> Float[Array, ""]:
    """CE against (1 - eps) * one_hot + eps * uniform, as torch's F.cross_entropy(label_smoothing).

    Per position: (1 - eps) * ce + eps * mean_over_vocab(-log_softmax); then mean over positions.
    """
    log_probs = jax.nn.log_softmax(_upcast(logits), axis=-1)
    ce = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    uniform_ce = -jnp.mean(log_probs, axis=-1)
    return jnp.mean((1.0 - smoothing) * ce + smoothing * uniform_ce)


def bits_per_byte(
    logits: Float[Array, "batch pos vocab"],
    targets: Int[Array, "batch pos"],
    bytes_per_token: Int[Array, " vocab"],
) -> Float[Array, ""]:
    """Total nats converted to bits, divided by the targets' total (unclamped) byte count.

    A tokenizer-independent compression metric; unlike the bytes-weighted loss, zero-byte tokens
    add their loss but no bytes.
    """
    ce = token_cross_entropy(logits, targets)
    total_bytes = jnp.sum(_upcast(jnp.asarray(bytes_per_token)[targets]).astype(ce.dtype))
    return jnp.sum(ce) / math.log(2.0) / total_bytes
