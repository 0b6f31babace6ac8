"""A small Llama-style causal LM (RMSNorm, RoPE attention, SwiGLU MLP) with routable sites.

Sites, in this order: embed, layers.{i}.attn.{q,k,v,o} and layers.{i}.mlp.{gate,up,down},
unembed; all (d_in, d_out).
Input is token ids (batch, pos); output is logits (batch, pos, vocab).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.schema import LlamaModel
from param_decomp.targets.base import SiteFn, dense_site
from param_decomp.targets.token_lm import TokenLM, causal_attention

SITE_KINDS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


def rms_norm(
    x: Float[Array, "*b d"], scale: Float[Array, " d"], eps: float = 1e-6
) -> Float[Array, "*b d"]:
    """x / rms(x) * scale; the statistics and the product in float32, the result in x's dtype."""
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(var + eps) * scale).astype(x.dtype)


def rope(x: Float[Array, "b t h d"], base: float = 10000.0) -> Float[Array, "b t h d"]:
    """Rotary position embedding over the last dim (pairs (i, i + d/2)).

    The angles and their cos/sin are float32; the tables are cast to x's dtype before the
    rotation, so a bf16 x stays bf16 (a no-op for float32)."""
    t, d = x.shape[1], x.shape[-1]
    freqs = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] * freqs[None, :]
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class Llama(TokenLM):
    SITE_KINDS = SITE_KINDS

    def __init__(self, cfg: LlamaModel, *, rngs: nnx.Rngs):
        self.n_features = cfg.vocab_size
        self.n_heads = cfg.n_heads
        self.n_layers = cfg.n_layers
        self.logit_soft_cap = cfg.logit_soft_cap
        d, f, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size

        def w(shape: tuple[int, int]) -> nnx.Param:
            return nnx.Param(jax.random.normal(rngs.params(), shape) / shape[0] ** 0.5)

        self.embed = nnx.Param(jax.random.normal(rngs.params(), (v, d)) * 0.02)
        shapes = {
            "attn.q": (d, d),
            "attn.k": (d, d),
            "attn.v": (d, d),
            "attn.o": (d, d),
            "mlp.gate": (d, f),
            "mlp.up": (d, f),
            "mlp.down": (f, d),
        }
        self.layers = nnx.List(
            [
                nnx.Dict({k.replace(".", "_"): w(s) for k, s in shapes.items()})
                for _ in range(cfg.n_layers)
            ]
        )
        self.norms = nnx.List([nnx.Param(jnp.ones((2, d))) for _ in range(cfg.n_layers)])
        self.final_norm = nnx.Param(jnp.ones((d,)))
        self.tied_head = cfg.tied_head
        if not cfg.tied_head:
            self.unembed = w((d, v))

    def __call__(
        self, tokens: Int[Array, "b t"], site_fn: SiteFn = dense_site
    ) -> Float[Array, "b t v"]:
        weights = self.site_weights()
        x = self.embed_tokens(tokens, site_fn)
        b, t, d = x.shape
        h = self.n_heads
        for i in range(self.n_layers):
            site = lambda k, inp, i=i: site_fn(f"layers.{i}.{k}", inp, weights[f"layers.{i}.{k}"])  # noqa: E731
            norms = self.norms[i][...]
            a_in = rms_norm(x, norms[0])
            q = rope(site("attn.q", a_in).reshape(b, t, h, d // h))
            k = rope(site("attn.k", a_in).reshape(b, t, h, d // h))
            v = site("attn.v", a_in).reshape(b, t, h, d // h)
            x = x + site("attn.o", causal_attention(q, k, v))
            m_in = rms_norm(x, norms[1])
            x = x + site("mlp.down", jax.nn.silu(site("mlp.gate", m_in)) * site("mlp.up", m_in))
        return self.head(rms_norm(x, self.final_norm[...]), site_fn)
