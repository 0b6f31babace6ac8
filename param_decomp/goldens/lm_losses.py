"""Golden family `lm_losses`: LM objectives and their gradients w.r.t. the logits.

Each expected key names one objective; hyperparameters are parsed from the key
(`focal_gamma<g>`, `ce_plus_z_loss_<coeff>`, `ce_label_smoothing_<eps>`) so new cases with
other values need no code change. Evaluated in float32.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from param_decomp.goldens.registry import Case, Comparison, compare_tree, register_family
from param_decomp.losses.lm_objectives import (
    bits_per_byte,
    bytes_weighted_cross_entropy,
    cross_entropy,
    focal,
    label_smoothing_cross_entropy,
    z_loss,
)

LogitsLoss = Callable[[Float[Array, "batch pos vocab"]], Float[Array, ""]]

_FOCAL = re.compile(r"focal_gamma(?P<v>.+)")
_Z_LOSS = re.compile(r"ce_plus_z_loss_(?P<v>.+)")
_SMOOTHING = re.compile(r"ce_label_smoothing_(?P<v>.+)")


def _parse_float(key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError as err:
        raise ValueError(f"lm_losses: cannot parse a hyperparameter from key {key!r}") from err


def _objective_for_key(key: str, targets: Array, bytes_per_token: Array) -> LogitsLoss:
    """Map an expected key to a function of the logits alone."""
    if key == "ce":
        return lambda lg: cross_entropy(lg, targets)
    if key == "bytes_weighted_ce":
        return lambda lg: bytes_weighted_cross_entropy(lg, targets, bytes_per_token)
    if key == "bits_per_byte":
        return lambda lg: bits_per_byte(lg, targets, bytes_per_token)
    if m := _FOCAL.fullmatch(key):
        gamma = _parse_float(key, m["v"])
        return lambda lg: focal(lg, targets, gamma)
    if m := _Z_LOSS.fullmatch(key):
        coeff = _parse_float(key, m["v"])
        return lambda lg: cross_entropy(lg, targets) + z_loss(lg, coeff)
    if m := _SMOOTHING.fullmatch(key):
        eps = _parse_float(key, m["v"])
        return lambda lg: label_smoothing_cross_entropy(lg, targets, eps)
    raise ValueError(f"lm_losses: unknown expected key {key!r}")


@register_family("lm_losses")
def evaluate_lm_losses(case: Case) -> list[Comparison]:
    """Compute every expected objective (value and d/dlogits) for one case."""
    inputs = case["inputs"]
    logits = jnp.asarray(np.asarray(inputs["logits"]), dtype=jnp.float32)
    targets = jnp.asarray(np.asarray(inputs["targets"]), dtype=jnp.int32)
    bytes_per_token = jnp.asarray(np.rint(np.asarray(inputs["bytes_per_token"])), dtype=jnp.int32)

    comparisons: list[Comparison] = []
    for key, want in case["expected"].items():
        fn = _objective_for_key(key, targets, bytes_per_token)
        if isinstance(want, dict):
            unknown = set(want) - {"loss", "grad_logits"}
            if unknown:
                raise ValueError(f"lm_losses: unknown sub-keys {sorted(unknown)} under {key!r}")
            loss, grad = jax.value_and_grad(fn)(logits)
            got = {"loss": loss, "grad_logits": grad}
            comparisons.extend(compare_tree(key, {k: got[k] for k in want}, want))
        else:
            comparisons.extend(compare_tree(key, fn(logits), want))
    return comparisons
