"""Causal-importance functions (SPEC S5): map what a site sees to one pre-activation per component.

Three kinds, picked by `ci_function.type`:
- per_component_mlp: each component's own scalar MLP on its inner activation x . V[:, c]
- per_site_mlp: one MLP per site on the site input x, with C outputs
- global_mlp: one MLP on every site input concatenated, its outputs split across sites
Hidden layers use GELU; init is normal with std = sqrt(2) / sqrt(fan_in), biases zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

RELU_GAIN = 2.0**0.5


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int, gain: float) -> Array:
    return jax.random.normal(rngs.params(), shape, jnp.float32) * (gain / fan_in**0.5)


class PerComponentMLP(nnx.Module):
    """C independent scalar MLPs 1 -> h_1 -> ... -> 1, evaluated as batched einsums."""

    def __init__(self, C: int, hidden: list[int], *, rngs: nnx.Rngs):
        widths = [1, *hidden, 1]
        self.weights = nnx.List(
            [
                nnx.Param(_normal(rngs, (C, a, b), a, RELU_GAIN))
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.biases = nnx.List([nnx.Param(jnp.zeros((C, b), jnp.float32)) for b in widths[1:]])

    def __call__(self, acts: Float[Array, "*b C"]) -> Float[Array, "*b C"]:
        h = acts[..., None]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            w = w[...]
            if w.shape[1] == 1:  # scalar in: a broadcast multiply, not a tiny batched matmul
                h = h * w[:, 0, :] + b[...]
            elif w.shape[2] == 1:  # scalar out: a multiply-reduce
                h = jnp.sum(h * w[:, :, 0], axis=-1, keepdims=True) + b[...]
            else:
                h = jnp.einsum("...ca,cab->...cb", h, w) + b[...]
            if i < last:
                h = jax.nn.gelu(h)
        return h[..., 0]


class VectorMLP(nnx.Module):
    """A dense MLP d_in -> hidden -> d_out with GELU between layers."""

    def __init__(self, d_in: int, hidden: list[int], d_out: int, *, rngs: nnx.Rngs):
        widths = [d_in, *hidden, d_out]
        self.weights = nnx.List(
            [
                nnx.Param(_normal(rngs, (a, b), a, RELU_GAIN))
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.biases = nnx.List([nnx.Param(jnp.zeros((b,), jnp.float32)) for b in widths[1:]])

    def __call__(self, x: Float[Array, "*b d_in"]) -> Float[Array, "*b d_out"]:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w[...] + b[...]
            if i < last:
                x = jax.nn.gelu(x)
        return x
