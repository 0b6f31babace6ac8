"""Forwards of the target with some sites replaced by their masked components (S2, S6)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from param_decomp.decomposition.components import decomposed_linear, stochastic_mask
from param_decomp.targets.base import SiteFn


def recording_site_fn(store: dict[str, Array]) -> SiteFn:
    """The clean path, remembering every site's input (the CI function reads them)."""

    def site_fn(name: str, x: Array, W: Array) -> Array:
        store[name] = x
        return x @ W

    return site_fn


def clean_forward(target: Any, x: Array, sites: tuple[str, ...]) -> tuple[Array, dict[str, Array]]:
    """The target's own output on x and the inputs the given sites saw (the CI reads them)."""
    store: dict[str, Array] = {}
    out = target(x, recording_site_fn(store))
    return out, {s: store[s] for s in sites}


def masked_site_fn(
    live: tuple[str, ...],
    VU: dict[str, tuple[Array, Array]],
    ci_lower: dict[str, Array],
    forward: dict[str, Any],
    use_delta: bool,
) -> SiteFn:
    """Live sites run ((x V) * mask) U (+ delta); others, and unrouted positions, run x @ W."""

    def site_fn(name: str, x: Array, W: Array) -> Array:
        if name not in live:
            return x @ W
        V, U = VU[name]
        mask = stochastic_mask(ci_lower[name], forward["mask_source"][name])
        delta = forward["delta_source"][name] if use_delta else None
        out = decomposed_linear(x, V, U, mask, W if use_delta else None, delta)
        routed = forward["routed"]
        if routed is not None:
            out = jnp.where(routed[name][..., None], out, x @ W)
        return out

    return site_fn
