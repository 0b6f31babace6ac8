"""The global transformer CI function (SPEC S5.5): CI for a group of LM sites from one small
bidirectional transformer over the sequence.

What a component of an LM does at a token can depend on context the site's own input has
already mixed in, but also on tokens AFTER it (a component may matter only when a later token
needs it), so the CI network attends over the whole sequence in both directions. It reads every
site's tap (its clean input: a residual-stream read), projects their concatenation to `d_model`,
runs pre-norm blocks (RMSNorm, rotary multi-head attention without a causal mask, GELU MLP)
and emits one pre-activation per component of every site. The rotary frequencies are a fixed
function of `rope_base` and the head size, computed in the forward: never trained, never saved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from param_decomp.config.schema import CIFunction


def _dense(rngs: nnx.Rngs, d_in: int, d_out: int, scale: float = 1.0) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), (d_in, d_out)) * (scale / d_in**0.5))


def rotary_frequencies(head_dim: int, base: float) -> Float[Array, " half"]:
    """theta_i = base^(-i / (head_dim / 2)), i < head_dim / 2: constants, not parameters."""
    half = head_dim // 2
    return base ** (-jnp.arange(half, dtype=jnp.float32) / half)


def rotate(x: Float[Array, "b t h d"], freqs: Float[Array, " half"]) -> Float[Array, "b t h d"]:
    """Rotary position embedding: pairs (i, i + d/2) rotated by position * theta_i."""
    angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * freqs[None, :]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _rms(x: Float[Array, "*b d"], scale: Float[Array, " d"]) -> Float[Array, "*b d"]:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


class _Block(nnx.Module):
    """Pre-norm block: x + Attn(RMS(x)), then x + MLP(RMS(x)); the output projections start at
    zero so every block begins as the identity and the network as a linear read-out."""

    def __init__(self, d: int, d_mlp: int, *, rngs: nnx.Rngs):
        self.norms = nnx.Param(jnp.ones((2, d)))
        self.qkv = _dense(rngs, d, 3 * d)
        self.out = nnx.Param(jnp.zeros((d, d)))
        self.up = _dense(rngs, d, d_mlp)
        self.down = nnx.Param(jnp.zeros((d_mlp, d)))

    def __call__(
        self, x: Float[Array, "b t d"], n_heads: int, freqs: Float[Array, " half"]
    ) -> Float[Array, "b t d"]:
        b, t, d = x.shape
        hd = d // n_heads
        q, k, v = jnp.split(_rms(x, self.norms[0]) @ self.qkv[...], 3, axis=-1)
        q = rotate(q.reshape(b, t, n_heads, hd), freqs)
        k = rotate(k.reshape(b, t, n_heads, hd), freqs)
        v = v.reshape(b, t, n_heads, hd)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / hd**0.5
        mixed = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + mixed.reshape(b, t, d) @ self.out[...]
        return x + jax.nn.gelu(_rms(x, self.norms[1]) @ self.up[...]) @ self.down[...]


class GlobalTransformerCI(nnx.Module):
    """Taps (b, t, sum d_in) -> (b, t, sum C): one transformer for every site of the group."""

    def __init__(self, cfg: CIFunction, d_taps: int, n_out: int, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.rope_base = cfg.rope_base
        self.read_in = _dense(rngs, d_taps, d)
        self.blocks = nnx.List(
            [_Block(d, cfg.d_mlp or 4 * d, rngs=rngs) for _ in range(cfg.n_layers)]
        )
        self.final_norm = nnx.Param(jnp.ones((d,)))
        self.read_out = _dense(rngs, d, n_out)
        self.read_out_bias = nnx.Param(jnp.zeros((n_out,)))

    def __call__(self, taps: Float[Array, "*b d_taps"]) -> Float[Array, "*b n_out"]:
        """Inputs without a sequence axis (toy targets) are treated as length-1 sequences."""
        seq = taps if taps.ndim == 3 else taps.reshape(-1, 1, taps.shape[-1])
        freqs = rotary_frequencies(self.read_in.shape[1] // self.n_heads, self.rope_base)
        x = seq @ self.read_in[...]
        for block in self.blocks:
            x = block(x, self.n_heads, freqs)
        out = _rms(x, self.final_norm[...]) @ self.read_out[...] + self.read_out_bias[...]
        return out.reshape(*taps.shape[:-1], out.shape[-1])
