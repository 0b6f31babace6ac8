"""Residual MLP toy (SPD paper): fixed unit-norm embedding, ReLU MLPs added to the stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from param_decomp.config.schema import ResidMLPModel
from param_decomp.targets.base import SiteFn, dense_site


class FrozenEmbedding(nnx.Variable):
    """Not trained by the target's own training and never decomposed."""


class ResidMLP(nnx.Module):
    """resid = x @ W_E; resid += mlp_out(ReLU(mlp_in(resid))) per layer; out = resid @ W_E^T."""

    def __init__(self, cfg: ResidMLPModel, *, rngs: nnx.Rngs):
        self.n_features = cfg.n_features
        self.label_coeff = cfg.label_coeff
        W_E = jax.random.normal(rngs.params(), (cfg.n_features, cfg.d_embed))
        self.W_E = FrozenEmbedding(W_E / jnp.linalg.norm(W_E, axis=-1, keepdims=True))
        self.mlp_in = nnx.List(
            [
                nnx.Param(
                    jax.random.normal(rngs.params(), (cfg.d_embed, cfg.d_mlp))
                    * (2.0 / cfg.d_embed) ** 0.5
                )
                for _ in range(cfg.n_layers)
            ]
        )
        self.mlp_out = nnx.List(
            [
                nnx.Param(
                    jax.random.normal(rngs.params(), (cfg.d_mlp, cfg.d_embed)) / cfg.d_mlp**0.5
                )
                for _ in range(cfg.n_layers)
            ]
        )

    def site_weights(self) -> dict[str, Float[Array, "d_in d_out"]]:
        weights = {}
        for i, (w_in, w_out) in enumerate(zip(self.mlp_in, self.mlp_out, strict=True)):
            weights[f"layers.{i}.mlp_in"] = w_in[...]
            weights[f"layers.{i}.mlp_out"] = w_out[...]
        return weights

    def __call__(
        self, x: Float[Array, "*b f"], site_fn: SiteFn = dense_site
    ) -> Float[Array, "*b f"]:
        weights = self.site_weights()
        W_E = self.W_E[...]
        resid = x @ W_E
        for i in range(len(self.mlp_in)):
            hidden = jax.nn.relu(
                site_fn(f"layers.{i}.mlp_in", resid, weights[f"layers.{i}.mlp_in"])
            )
            resid = resid + site_fn(f"layers.{i}.mlp_out", hidden, weights[f"layers.{i}.mlp_out"])
        return resid @ W_E.T

    def batch_shape(self, x: Array) -> tuple[int, ...]:
        return tuple(x.shape[:-1])

    def labels(self, x: Array) -> Array:
        """'act plus resid': each feature's label is x + coeff * ReLU(x)."""
        return x + self.label_coeff * jax.nn.relu(x)
