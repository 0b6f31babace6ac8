"""What every decomposable target offers: named linear sites and a forward that routes them.

A site is a linear map x @ W with W stored (d_in, d_out); an embedding is the site whose input
is token ids, read as one-hot rows (`site_product`). The forward calls `site_fn(name, x, W)`
for every site, so the decomposition can replace any subset of sites without the target knowing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import jax.numpy as jnp
from jaxtyping import Array, Float

SiteFn = Callable[[str, Array, Array], Array]


def site_product(x: Array, W: Float[Array, "d_in d_out"]) -> Array:
    """x @ W for a site input x. Integer x are row indices (token ids into an embedding): the
    product with their one-hot rows, taken as a gather so no (*b, vocab) array is formed."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.take(W, x, axis=0)
    return x @ W


def dense_site(name: str, x: Array, W: Array) -> Array:
    """The frozen path: the site's own weight."""
    del name
    return site_product(x, W)


class Target(Protocol):
    n_features: int

    def site_weights(self) -> dict[str, Float[Array, "d_in d_out"]]: ...

    def __call__(self, x: Array, site_fn: SiteFn = dense_site) -> Array: ...

    def batch_shape(self, x: Array) -> tuple[int, ...]: ...

    def labels(self, x: Array) -> Array: ...
