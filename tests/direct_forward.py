"""The decomposed model's forward written without the masked-forward machinery, for tests that
check the fast tier (and anything built on `masked_site_fn`) against a direct computation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp


def component_output(
    model: Any,
    target: Any,
    x: jax.Array,
    masks: dict[str, jax.Array] | None = None,
    live: Iterable[str] | None = None,
) -> jax.Array:
    """The target's output with the `live` sites (default: every decomposed site) computing
    ((x V) * m) U (m = 1 without `masks`) and every other site x @ W."""
    VU = model.all_VU()
    live = set(VU) if live is None else set(live)

    def product(h: jax.Array, M: jax.Array) -> jax.Array:
        return M[h] if jnp.issubdtype(h.dtype, jnp.integer) else h @ M  # token ids: M's rows

    def site_fn(name: str, h: jax.Array, W: jax.Array) -> jax.Array:
        if name not in live:
            return product(h, W)
        V, U = VU[name]
        acts = product(h, V)
        return (acts if masks is None else acts * masks[name]) @ U

    return target(x, site_fn)
