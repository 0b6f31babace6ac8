"""Toy model of superposition (Elhage et al.): features -> small hidden space -> ReLU readout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from param_decomp.config.schema import TMSModel
from param_decomp.targets.base import SiteFn, dense_site


class FixedIdentity(nnx.Variable):
    """A hidden layer fixed at the identity (`fixed_identity_hidden_layers`, S18.1): not an
    nnx.Param, so the target's training leaves it as it is; still a site to decompose."""


class TMS(nnx.Module):
    """out = ReLU(hidden(x @ W1) @ W2 + b); W2 = W1^T when tied. Sites: linear1, linear2, and
    hidden_layers.i for the optional square hidden layers (trained, or fixed identities)."""

    def __init__(self, cfg: TMSModel, *, rngs: nnx.Rngs):
        self.n_features = cfg.n_features
        self.tied = cfg.tied_weights
        fan = cfg.n_features
        self.W1 = nnx.Param(
            jax.random.normal(rngs.params(), (cfg.n_features, cfg.n_hidden)) * (2.0 / fan) ** 0.5
        )
        self.hidden = nnx.List(
            [
                FixedIdentity(jnp.eye(cfg.n_hidden))
                if cfg.fixed_identity_hidden_layers
                else nnx.Param(
                    jax.random.normal(rngs.params(), (cfg.n_hidden, cfg.n_hidden))
                    / cfg.n_hidden**0.5
                )
                for _ in range(cfg.n_hidden_layers)
            ]
        )
        if not cfg.tied_weights:
            self.W2 = nnx.Param(
                jax.random.normal(rngs.params(), (cfg.n_hidden, cfg.n_features)) / cfg.n_hidden**0.5
            )
        bias = (
            jnp.zeros
            if cfg.init_bias_to_zero
            else (lambda s: 0.01 * jax.random.normal(rngs.params(), s))
        )
        self.b_final = nnx.Param(jnp.asarray(bias((cfg.n_features,)), jnp.float32))

    def site_weights(self) -> dict[str, Float[Array, "d_in d_out"]]:
        W1 = self.W1[...]
        weights = {"linear1": W1}
        for i, layer in enumerate(self.hidden):
            weights[f"hidden_layers.{i}"] = layer[...]
        weights["linear2"] = W1.T if self.tied else self.W2[...]
        return weights

    def __call__(
        self, x: Float[Array, "*b f"], site_fn: SiteFn = dense_site
    ) -> Float[Array, "*b f"]:
        weights = self.site_weights()
        h = site_fn("linear1", x, weights["linear1"])
        for i in range(len(self.hidden)):
            name = f"hidden_layers.{i}"
            h = site_fn(name, h, weights[name])
        return jax.nn.relu(site_fn("linear2", h, weights["linear2"]) + self.b_final[...])

    def batch_shape(self, x: Array) -> tuple[int, ...]:
        return tuple(x.shape[:-1])

    def labels(self, x: Array) -> Array:
        """TMS is an autoencoder: the label is the input."""
        return x
