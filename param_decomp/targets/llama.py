"""A Llama-style causal LM (RMSNorm, RoPE attention, SwiGLU MLP) with routable sites.

Sites, in this order: embed, layers.{i}.attn.{q,k,v,o} and layers.{i}.mlp.{gate,up,down},
unembed; all (d_in, d_out); with grouped-query attention k and v are (d_model, n_kv_heads *
head_dim). The optional config fields (K/V heads, head size, RoPE base and scaling, norm eps,
Qwen3's q/k norms) let it hold Hugging Face Llama and Qwen3 checkpoints (S17); their defaults
are the project's small Llama.
Input is token ids (batch, pos); output is logits (batch, pos, vocab).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.schema import LinearRopeScaling, Llama3RopeScaling, LlamaModel
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


def rope_frequencies(
    d: int, base: float = 10000.0, scaling: LinearRopeScaling | Llama3RopeScaling | None = None
) -> Float[Array, " half"]:
    """Angle per position of each rotated pair i < d/2: base^(-2i/d), then the scaling (S17.3):
    `linear` divides all by its factor; `llama3` divides the wavelengths 2 pi / f above
    original / low_freq_factor, keeps those below original / high_freq_factor, and blends
    linearly in 1 / wavelength between."""
    freqs = base ** (-jnp.arange(0, d // 2, dtype=jnp.float32) / (d // 2))
    if scaling is None:
        return freqs
    if isinstance(scaling, LinearRopeScaling):
        return freqs / scaling.factor
    original, low, high = (
        scaling.original_max_position_embeddings,
        scaling.low_freq_factor,
        scaling.high_freq_factor,
    )
    wavelength = 2 * jnp.pi / freqs
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    kept_or_blended = jnp.where(wavelength < original / high, freqs, blended)
    return jnp.where(wavelength > original / low, freqs / scaling.factor, kept_or_blended)


def rope(
    x: Float[Array, "b t h d"],
    base: float = 10000.0,
    scaling: LinearRopeScaling | Llama3RopeScaling | None = None,
) -> Float[Array, "b t h d"]:
    """Rotary position embedding over the last dim (pairs (i, i + d/2)).

    The angles and their cos/sin are float32; the tables are cast to x's dtype before the
    rotation, so a bf16 x stays bf16 (a no-op for float32)."""
    t, d = x.shape[1], x.shape[-1]
    freqs = rope_frequencies(d, base, scaling)
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
        self.n_kv_heads, self.head_dim = cfg.kv_heads, cfg.head_size
        self.rope_theta, self.rope_scaling = cfg.rope_theta, cfg.rope_scaling
        self.rms_norm_eps, self.qk_norm = cfg.rms_norm_eps, cfg.qk_norm
        self.n_layers = cfg.n_layers
        self.logit_soft_cap = cfg.logit_soft_cap
        d, f, v = cfg.d_model, cfg.d_mlp, cfg.vocab_size
        q_width, kv_width = cfg.n_heads * cfg.head_size, cfg.kv_heads * cfg.head_size

        def w(shape: tuple[int, int]) -> nnx.Param:
            return nnx.Param(jax.random.normal(rngs.params(), shape) / shape[0] ** 0.5)

        self.embed = nnx.Param(jax.random.normal(rngs.params(), (v, d)) * 0.02)
        shapes = {
            "attn.q": (d, q_width),
            "attn.k": (d, kv_width),
            "attn.v": (d, kv_width),
            "attn.o": (q_width, d),
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
        if cfg.qk_norm:  # per layer: (q norm scale, k norm scale), over one head
            self.qk_norms = nnx.List(
                [nnx.Param(jnp.ones((2, cfg.head_size))) for _ in range(cfg.n_layers)]
            )
        self.tied_head = cfg.tied_head
        if not cfg.tied_head:
            self.unembed = w((d, v))

    def __call__(
        self, tokens: Int[Array, "b t"], site_fn: SiteFn = dense_site
    ) -> Float[Array, "b t v"]:
        weights = self.site_weights()
        x = self.embed_tokens(tokens, site_fn)
        for i in range(self.n_layers):
            site = lambda k, inp, i=i: site_fn(f"layers.{i}.{k}", inp, weights[f"layers.{i}.{k}"])  # noqa: E731
            norms = self.norms[i][...]
            a_in = rms_norm(x, norms[0], self.rms_norm_eps)
            x = x + site("attn.o", self.attention(i, site, a_in))
            m_in = rms_norm(x, norms[1], self.rms_norm_eps)
            x = x + site("mlp.down", jax.nn.silu(site("mlp.gate", m_in)) * site("mlp.up", m_in))
        return self.head(rms_norm(x, self.final_norm[...], self.rms_norm_eps), site_fn)

    def attention(
        self, i: int, site: Callable[[str, Array], Array], a_in: Float[Array, "b t d"]
    ) -> Float[Array, "b t h_dh"]:
        """Layer i's causal attention on the normed residual, the input of its o site.

        Grouped-query (S17.2): query head j reads K/V head j // (n_heads / n_kv_heads). With
        `qk_norm` every query and key head is RMS-normed (its own scale per layer) before RoPE."""
        b, t, _ = a_in.shape
        h, kv, dh = self.n_heads, self.n_kv_heads, self.head_dim
        q = site("attn.q", a_in).reshape(b, t, h, dh)
        k = site("attn.k", a_in).reshape(b, t, kv, dh)
        v = site("attn.v", a_in).reshape(b, t, kv, dh)
        if self.qk_norm:
            scales = self.qk_norms[i][...]
            q = rms_norm(q, scales[0], self.rms_norm_eps)
            k = rms_norm(k, scales[1], self.rms_norm_eps)
        q = rope(q, self.rope_theta, self.rope_scaling)
        k = rope(k, self.rope_theta, self.rope_scaling)
        if kv != h:
            k, v = jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2)
        return causal_attention(q, k, v)
