"""What the token-level LM targets (Llama, GPT-2) share: site weights by layer, batch shape and
labels, causal attention, and the (optionally tied, optionally soft-capped) output head.

A subclass sets `SITE_KINDS` and creates `layers` (one nnx.Dict of site weights per layer),
`embed`, `tied_head`, `logit_soft_cap` and, when the head is untied, `unembed`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int


def soft_cap(logits: Float[Array, "*b vocab"], cap: float) -> Float[Array, "*b vocab"]:
    """cap * tanh(logits / cap): logits bounded in (-cap, cap), about the identity well below
    the cap (the tanh logit soft-cap of Gemma 2 / modded-nanoGPT)."""
    return cap * jnp.tanh(logits / cap)


def causal_attention(
    q: Float[Array, "b t h dh"], k: Float[Array, "b t h dh"], v: Float[Array, "b t h dh"]
) -> Float[Array, "b t h_dh"]:
    """Softmax attention of every position over itself and the positions before it."""
    b, t, h, dh = q.shape
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / dh**0.5
    probs = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, h * dh)


class TokenLM(nnx.Module):
    SITE_KINDS: tuple[str, ...] = ()

    def site_weights(self) -> dict[str, Float[Array, "d_in d_out"]]:
        return {
            f"layers.{i}.{k}": layer[k.replace(".", "_")][...]
            for i, layer in enumerate(self.layers)
            for k in self.SITE_KINDS
        }

    def batch_shape(self, tokens: Int[Array, "b t"]) -> tuple[int, ...]:
        return tuple(tokens.shape)

    def labels(self, tokens: Int[Array, "b t"]) -> Int[Array, "b t"]:
        """Next-token labels; the last position has none (see `lm_objectives`)."""
        return tokens

    def head(self, normed: Float[Array, "b t d"]) -> Float[Array, "b t v"]:
        """Logits from the final normalised residual: embed^T when tied, then the soft-cap."""
        weight = self.embed[...].T if self.tied_head else self.unembed[...]
        logits = normed @ weight
        return logits if self.logit_soft_cap is None else soft_cap(logits, self.logit_soft_cap)
