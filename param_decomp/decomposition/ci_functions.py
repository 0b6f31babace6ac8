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


# Above this many (in x out) unit pairs a hidden layer is one batched einsum instead of unrolled.
MAX_UNROLLED_PAIRS = 1024


class PerComponentMLP(nnx.Module):
    """C independent scalar MLPs 1 -> h_1 -> ... -> 1 (S5.1).

    Evaluated with the hidden units unrolled: every unit is one (*b, C) array and every layer a
    sum of broadcast multiply-adds over them, so the whole MLP compiles into a few elementwise
    fusions over (*b, C). The (*b, C, hidden) form it replaces makes XLA:CPU emit a broadcast-
    multiply-reduce per layer and its transposes in the backward, which ran 1.7x slower on both
    toys (bench/README.md, "CI function"). Layers wider than MAX_UNROLLED_PAIRS fall back to a
    batched einsum.
    """

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
        units = [acts]  # one (*b, C) array per unit of the current layer
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            units = _per_component_layer(units, w[...], b[...])
            if i < last:
                units = [jax.nn.gelu(u) for u in units]
        return units[0]


def _per_component_layer(
    units: list[Float[Array, "*b C"]], w: Float[Array, "C a b"], b: Float[Array, "C b"]
) -> list[Float[Array, "*b C"]]:
    """out_j = sum_i units_i * w[:, i, j] + b[:, j], per component."""
    n_in, n_out = w.shape[1], w.shape[2]
    if n_in * n_out > MAX_UNROLLED_PAIRS:
        h = jnp.einsum("...ca,cab->...cb", jnp.stack(units, axis=-1), w) + b
        return [h[..., j] for j in range(n_out)]
    weight = _rows(w.reshape(w.shape[0], n_in * n_out))  # weight[i * n_out + j] = w[:, i, j]
    bias = _rows(b)
    outs = []
    for j in range(n_out):
        out = units[0] * weight[j] + bias[j]
        for k in range(1, n_in):
            out = out + units[k] * weight[k * n_out + j]
        outs.append(out)
    return outs


def _rows(m: Float[Array, "C n"]) -> list[Float[Array, " C"]]:
    """The n columns of m as (C,) vectors from ONE split, whose transpose in the backward is one
    concatenate (indexing each column would cost a slice and a pad per unit)."""
    return [r.reshape(-1) for r in jnp.split(m.T, m.shape[1], axis=0)]


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
