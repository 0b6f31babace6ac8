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
        """Logits from the final normalised residual: embed^T when tied, then the soft-cap.

        The product accumulates into float32 and the logits are float32 whatever the compute
        dtype, so the soft-cap and every loss on them run in float32 (see `precision`)."""
        weight = self.embed[...].T if self.tied_head else self.unembed[...]
        logits = jnp.matmul(normed, weight, preferred_element_type=jnp.float32).astype(jnp.float32)
        return logits if self.logit_soft_cap is None else soft_cap(logits, self.logit_soft_cap)
