"""What the token-level LM targets (Llama, GPT-2) share: site weights by layer, batch shape and
labels, causal attention, and the (optionally tied, optionally soft-capped) output head.

A subclass sets `SITE_KINDS` and creates `layers` (one nnx.Dict of site weights per layer),
`embed`, `tied_head`, `logit_soft_cap` and, when the head is untied, `unembed`.

Site order (S1.4), the forward's: `embed` (token ids -> d_model, read as one-hot rows), then per
layer `layers.{i}.<kind>` in SITE_KINDS order, then `unembed` (d_model -> vocab; the embedding
transposed when the head is tied: a site of its own all the same).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.targets.base import SiteFn, dense_site

INDEX_SITES = ("embed",)  # sites whose input is token ids (see targets.base.site_product)


def soft_cap(logits: Float[Array, "*b vocab"], cap: float) -> Float[Array, "*b vocab"]:
    """cap * tanh(logits / cap): logits bounded in (-cap, cap), about the identity well below
    the cap (the tanh logit soft-cap of Gemma 2 / modded-nanoGPT)."""
    return cap * jnp.tanh(logits / cap)


def causal_attention(
    q: Float[Array, "b t h dh"], k: Float[Array, "b t h dh"], v: Float[Array, "b t h dh"]
) -> Float[Array, "b t h_dh"]:
    """Softmax attention of every position over itself and the positions before it.

    The scores and the softmax are float32 whatever the input dtype; the probabilities are cast
    to v's dtype for the value product, so the output has v's dtype (see `precision`)."""
    b, t, h, dh = q.shape
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / dh**0.5
    probs = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h * dh)


class TokenLM(nnx.Module):
    SITE_KINDS: tuple[str, ...] = ()
    INDEX_SITES = INDEX_SITES

    def site_weights(self) -> dict[str, Float[Array, "d_in d_out"]]:
        """Every linear matrix of the LM as a site, in forward order (module docstring)."""
        weights = {"embed": self.embed[...]}
        weights.update(
            {
                f"layers.{i}.{k}": layer[k.replace(".", "_")][...]
                for i, layer in enumerate(self.layers)
                for k in self.SITE_KINDS
            }
        )
        weights["unembed"] = self.embed[...].T if self.tied_head else self.unembed[...]
        return weights

    def embed_tokens(self, tokens: Int[Array, "b t"], site_fn: SiteFn) -> Float[Array, "b t d"]:
        """The `embed` site on token ids: a row lookup on the dense path."""
        return site_fn("embed", tokens, self.embed[...])

    def batch_shape(self, tokens: Int[Array, "b t"]) -> tuple[int, ...]:
        return tuple(tokens.shape)

    def labels(self, tokens: Int[Array, "b t"]) -> Int[Array, "b t"]:
        """Next-token labels; the last position has none (see `lm_objectives`)."""
        return tokens

    def head(
        self, normed: Float[Array, "b t d"], site_fn: SiteFn = dense_site
    ) -> Float[Array, "b t v"]:
        """Logits from the final normalised residual through the `unembed` site (embed^T when
        tied), then the soft-cap.

        On the dense path the product accumulates into float32 and the logits are float32
        whatever the compute dtype, so the soft-cap and every loss on them run in float32 (see
        `precision`); a decomposition's site function computes it as it computes every site."""
        weight = self.embed[...].T if self.tied_head else self.unembed[...]
        if site_fn is dense_site:
            logits = jnp.matmul(normed, weight, preferred_element_type=jnp.float32)
        else:
            logits = site_fn("unembed", normed, weight)
        logits = logits.astype(jnp.float32)
        return logits if self.logit_soft_cap is None else soft_cap(logits, self.logit_soft_cap)
