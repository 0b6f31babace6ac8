"""The Llama attention options hf checkpoints need (S17.2, S17.3), checked without transformers:
grouped-query attention equals full multi-head attention with each K/V head repeated for its
query group, and the llama3 RoPE scaling treats its three wavelength bands as specified."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from param_decomp.config.schema import Llama3RopeScaling, LlamaModel
from param_decomp.targets.llama import SITE_KINDS, Llama, rope_frequencies

BASE = {"type": "llama", "vocab_size": 50, "d_model": 32, "n_heads": 4, "d_mlp": 48, "n_layers": 2}


def test_gqa_equals_mha_with_repeated_kv_heads() -> None:
    """Query head j reads K/V head j // (n_heads / n_kv_heads)."""
    gqa = Llama(LlamaModel(**BASE, n_kv_heads=2, head_dim=6), rngs=nnx.Rngs(0))
    mha = Llama(LlamaModel(**BASE, head_dim=6), rngs=nnx.Rngs(1))

    def repeat_heads(w: jax.Array) -> jax.Array:  # (d, 2 heads * 6) -> (d, 4 heads * 6)
        return jnp.repeat(w.reshape(w.shape[0], 2, 6), 2, axis=1).reshape(w.shape[0], 24)

    for name in ("embed", "final_norm", "unembed"):
        getattr(mha, name)[...] = getattr(gqa, name)[...]
    for i in range(2):
        mha.norms[i][...] = gqa.norms[i][...]
        for kind in SITE_KINDS:
            key = kind.replace(".", "_")
            w = gqa.layers[i][key][...]
            mha.layers[i][key][...] = repeat_heads(w) if kind in ("attn.k", "attn.v") else w
    assert gqa.site_weights()["layers.0.attn.k"].shape == (32, 12)
    assert mha.site_weights()["layers.0.attn.k"].shape == (32, 24)
    tokens = jnp.arange(30).reshape(2, 15) % 50
    np.testing.assert_allclose(np.asarray(gqa(tokens)), np.asarray(mha(tokens)), atol=1e-5)


def test_llama3_rope_scaling_bands() -> None:
    """Long wavelengths divided by factor, short ones kept, the band between blended."""
    scaling = Llama3RopeScaling(
        type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    )
    plain = np.asarray(rope_frequencies(16, 10000.0))
    scaled = np.asarray(rope_frequencies(16, 10000.0, scaling))
    wavelength = 2 * np.pi / plain  # 6.3, 19.9, 62.8, 199, ...
    long, short = wavelength > 64, wavelength < 16
    np.testing.assert_allclose(scaled[long], plain[long] / 8, rtol=1e-6)
    np.testing.assert_array_equal(scaled[short], plain[short])
    middle = ~long & ~short
    assert middle.sum() == 2
    s = (64 / wavelength[middle] - 1.0) / (4.0 - 1.0)
    expected = (1 - s) * plain[middle] / 8 + s * plain[middle]
    np.testing.assert_allclose(scaled[middle], expected, rtol=1e-5)
