"""A small GPT-2-style causal LM (LayerNorm, learned positions, GELU MLP, biases) with routable
sites, beside the Llama-style one.

Sites, in this order: embed, layers.{i}.attn.{q,k,v,o} and layers.{i}.mlp.{fc,proj}, unembed;
all (d_in, d_out) and without their biases: a site is the linear map x @ W, the bias is added
outside it and stays frozen.
Input is token ids (batch, pos); output is logits (batch, pos, vocab).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.schema import GPT2Model
from param_decomp.targets.base import SiteFn, dense_site
from param_decomp.targets.token_lm import TokenLM, causal_attention

SITE_KINDS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")


def layer_norm(
    x: Float[Array, "*b d"], scale: Float[Array, " d"], bias: Float[Array, " d"], eps: float = 1e-5
) -> Float[Array, "*b d"]:
    """(x - mean) / std * scale + bias; the statistics and the affine map in float32, the result
    in x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


class GPT2(TokenLM):
    SITE_KINDS = SITE_KINDS

    def __init__(self, cfg: GPT2Model, *, rngs: nnx.Rngs):
        self.n_features = cfg.vocab_size
        self.n_heads = cfg.n_heads
        self.n_layers = cfg.n_layers
        self.logit_soft_cap = cfg.logit_soft_cap
        self.tied_head = cfg.tied_head
        self.layer_norm_eps = cfg.layer_norm_eps
        d, f, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
        shapes = {
            "attn.q": (d, d),
            "attn.k": (d, d),
            "attn.v": (d, d),
            "attn.o": (d, d),
            "mlp.fc": (d, f),
            "mlp.proj": (f, d),
        }
        # GPT-2's init: N(0, 0.02), the residual projections scaled by 1/sqrt(2 n_layers)
        resid_scale = (2 * cfg.n_layers) ** -0.5

        def w(kind: str) -> nnx.Param:
            scale = 0.02 * (resid_scale if kind in ("attn.o", "mlp.proj") else 1.0)
            return nnx.Param(jax.random.normal(rngs.params(), shapes[kind]) * scale)

        self.embed = nnx.Param(jax.random.normal(rngs.params(), (v, d)) * 0.02)
        self.positions = nnx.Param(jax.random.normal(rngs.params(), (cfg.seq_len, d)) * 0.01)
        self.layers = nnx.List(
            [nnx.Dict({k.replace(".", "_"): w(k) for k in SITE_KINDS}) for _ in range(cfg.n_layers)]
        )
        self.biases = nnx.List(
            [
                nnx.Dict(
                    {k.replace(".", "_"): nnx.Param(jnp.zeros((s[1],))) for k, s in shapes.items()}
                )
                for _ in range(cfg.n_layers)
            ]
        )
        # per layer: (ln1 scale, ln1 bias, ln2 scale, ln2 bias)
        self.norms = nnx.List(
            [nnx.Param(jnp.stack([jnp.ones(d), jnp.zeros(d)] * 2)) for _ in range(cfg.n_layers)]
        )
        self.final_norm = nnx.Param(jnp.stack([jnp.ones(d), jnp.zeros(d)]))
        if not cfg.tied_head:
            self.unembed = nnx.Param(jax.random.normal(rngs.params(), (d, v)) * 0.02)

    def __call__(
        self, tokens: Int[Array, "b t"], site_fn: SiteFn = dense_site
    ) -> Float[Array, "b t v"]:
        weights = self.site_weights()
        b, t = tokens.shape
        x = self.embed_tokens(tokens, site_fn) + self.positions[...][:t]
        d = x.shape[-1]
        h = self.n_heads
        for i in range(self.n_layers):
            bias = self.biases[i]

            def site(k: str, inp: Array, i: int = i, bias: nnx.Dict = bias) -> Array:
                name = f"layers.{i}.{k}"
                return site_fn(name, inp, weights[name]) + bias[k.replace(".", "_")][...]

            n = self.norms[i][...]
            a_in = layer_norm(x, n[0], n[1], self.layer_norm_eps)
            q = site("attn.q", a_in).reshape(b, t, h, d // h)
            k = site("attn.k", a_in).reshape(b, t, h, d // h)
            v = site("attn.v", a_in).reshape(b, t, h, d // h)
            x = x + site("attn.o", causal_attention(q, k, v))
            m_in = layer_norm(x, n[2], n[3], self.layer_norm_eps)
            x = x + site("mlp.proj", jax.nn.gelu(site("mlp.fc", m_in)))
        fn = self.final_norm[...]
        return self.head(layer_norm(x, fn[0], fn[1], self.layer_norm_eps), site_fn)
