"""LM objectives: golden cases (values + grads w.r.t. logits) and exactness properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from param_decomp.goldens.lm_losses import evaluate_lm_losses
from param_decomp.goldens.registry import FAMILIES, Comparison
from param_decomp.losses.lm_objectives import (
    bits_per_byte,
    bytes_weighted_cross_entropy,
    cross_entropy,
    focal,
    label_smoothing_cross_entropy,
    token_cross_entropy,
    z_loss,
)

GOLDENS = Path(__file__).resolve().parents[2].parent / "shared" / "goldens"


def _load_cases() -> list[dict[str, Any]]:
    data = json.loads((GOLDENS / "lm_losses.json").read_text())
    assert data["family"] == "lm_losses"
    assert data["cases"], "golden file has no cases"
    return data["cases"]


def _leaf_names(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return [prefix]
    return [n for k, v in tree.items() for n in _leaf_names(v, f"{prefix}.{k}" if prefix else k)]


def _assert_close(comparisons: list[Comparison], atol: float, rtol: float) -> None:
    failures = []
    for c in comparisons:
        got, want = np.asarray(c.got, np.float64), np.asarray(c.want, np.float64)
        assert got.shape == want.shape, f"{c.name}: shape {got.shape} != {want.shape}"
        bad = ~(np.abs(got - want) <= atol + rtol * np.abs(want))
        if bad.any():
            failures.append(f"{c.name}: max abs err {np.max(np.abs(got - want)):.3e}")
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("case", _load_cases(), ids=lambda c: c["name"])
def test_lm_losses_golden(case: dict[str, Any]) -> None:
    comparisons = evaluate_lm_losses(case)
    assert [c.name for c in comparisons] == _leaf_names(case["expected"])
    _assert_close(comparisons, case["atol"], case["rtol"])


def test_family_registered() -> None:
    assert FAMILIES["lm_losses"] is evaluate_lm_losses


def test_unknown_key_raises() -> None:
    case = dict(_load_cases()[0])
    case["expected"] = {"ce_plus_mystery_0.1": {"loss": 0.0}}
    with pytest.raises(ValueError):
        evaluate_lm_losses(case)


def test_new_gamma_parsed_from_key() -> None:
    case = _load_cases()[0]
    logits = jnp.asarray(case["inputs"]["logits"], jnp.float32)
    targets = jnp.asarray(case["inputs"]["targets"], jnp.int32)
    (comp,) = evaluate_lm_losses({**case, "expected": {"focal_gamma3.5": 0.0}})
    np.testing.assert_array_equal(comp.got, np.asarray(focal(logits, targets, 3.5)))
    assert comp.got != np.asarray(focal(logits, targets, 2.0))


def _random_inputs(seed: int = 0, b: int = 3, t: int = 7, v: int = 17):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    logits = 3.0 * jax.random.normal(k1, (b, t, v), jnp.float32)
    targets = jax.random.randint(k2, (b, t), 0, v)
    bytes_per_token = jax.random.randint(k3, (v,), 0, 6)
    return logits, targets, bytes_per_token


def test_token_cross_entropy_matches_definition() -> None:
    logits, targets, _ = _random_inputs()
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(token_cross_entropy(logits, targets), lse - picked, rtol=1e-5)


def test_focal_gamma0_is_ce_bitwise() -> None:
    logits, targets, _ = _random_inputs()
    ce, g_ce = jax.value_and_grad(cross_entropy)(logits, targets)
    fl, g_fl = jax.value_and_grad(focal)(logits, targets, 0.0)
    np.testing.assert_array_equal(np.asarray(fl), np.asarray(ce))
    np.testing.assert_array_equal(np.asarray(g_fl), np.asarray(g_ce))


def test_focal_traced_gamma0_matches_ce() -> None:
    logits, targets, _ = _random_inputs()
    fl = jax.jit(focal)(logits, targets, jnp.float32(0.0))
    np.testing.assert_allclose(fl, cross_entropy(logits, targets), rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_grad_finite_when_ce_is_zero(gamma: float) -> None:
    # A huge margin makes p_target == 1 in float32, so ce and 1 - p are exactly 0.
    logits = jnp.zeros((1, 2, 5), jnp.float32).at[..., 0].set(200.0)
    targets = jnp.zeros((1, 2), jnp.int32)
    assert float(jnp.max(token_cross_entropy(logits, targets))) == 0.0
    for g in (gamma, jnp.float32(gamma)):
        value, grad = jax.value_and_grad(focal)(logits, targets, g)
        assert np.isfinite(np.asarray(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_focal_down_weights_with_gamma() -> None:
    logits, targets, _ = _random_inputs()
    values = [float(focal(logits, targets, g)) for g in (0.0, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_bytes_weighted_equal_bytes_is_ce() -> None:
    logits, targets, _ = _random_inputs()
    bytes_per_token = jnp.full((logits.shape[-1],), 3, jnp.int32)
    np.testing.assert_allclose(
        bytes_weighted_cross_entropy(logits, targets, bytes_per_token),
        cross_entropy(logits, targets),
        rtol=1e-6,
    )


def test_bytes_weighted_clamps_zero_bytes() -> None:
    logits, targets, _ = _random_inputs()
    zeros = jnp.zeros((logits.shape[-1],), jnp.int32)
    np.testing.assert_allclose(
        bytes_weighted_cross_entropy(logits, targets, zeros),
        cross_entropy(logits, targets),
        rtol=1e-6,
    )


def test_label_smoothing_zero_is_ce() -> None:
    logits, targets, _ = _random_inputs()
    np.testing.assert_array_equal(
        np.asarray(label_smoothing_cross_entropy(logits, targets, 0.0)),
        np.asarray(cross_entropy(logits, targets)),
    )


def test_label_smoothing_full_is_uniform_ce() -> None:
    logits, targets, _ = _random_inputs()
    want = -jnp.mean(jax.nn.log_softmax(logits, axis=-1))
    np.testing.assert_allclose(label_smoothing_cross_entropy(logits, targets, 1.0), want, rtol=1e-6)


def test_z_loss_zero_for_normalised_logits() -> None:
    logits, _, _ = _random_inputs()
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    assert abs(float(z_loss(log_probs, 1.0))) < 1e-10
    assert float(z_loss(logits, 1e-4)) > 0.0


def test_bits_per_byte_uniform_single_byte() -> None:
    # Uniform logits over 256 tokens of one byte each: exactly 8 bits per byte.
    logits = jnp.zeros((2, 3, 256), jnp.float32)
    targets = jnp.arange(6, dtype=jnp.int32).reshape(2, 3)
    ones = jnp.ones((256,), jnp.int32)
    np.testing.assert_allclose(bits_per_byte(logits, targets, ones), 8.0, rtol=1e-6)


def test_bf16_logits_reduce_in_float32() -> None:
    logits, targets, bytes_per_token = _random_inputs()
    low = logits.astype(jnp.bfloat16)
    for value in (
        cross_entropy(low, targets),
        focal(low, targets, 2.0),
        bytes_weighted_cross_entropy(low, targets, bytes_per_token),
        z_loss(low, 1e-4),
        label_smoothing_cross_entropy(low, targets, 0.1),
        bits_per_byte(low, targets, bytes_per_token),
    ):
        assert value.dtype == jnp.float32


def test_poly1_is_ce_plus_epsilon_one_minus_p() -> None:
    from param_decomp.losses.lm_objectives import cross_entropy, poly1, token_cross_entropy

    logits = jax.random.normal(jax.random.key(0), (3, 5, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 11)
    ce = token_cross_entropy(logits, targets)
    p = jnp.exp(-ce)
    np.testing.assert_allclose(poly1(logits, targets, 2.0), jnp.mean(ce + 2.0 * (1 - p)), rtol=1e-6)
    assert poly1(logits, targets, 0.0) == cross_entropy(logits, targets)
    grad = jax.grad(lambda z: poly1(z, targets, 1.0))(logits)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_logit_soft_cap_bounds_logits() -> None:
    from flax import nnx

    from param_decomp.config.schema import LlamaModel
    from param_decomp.targets.llama import Llama
    from param_decomp.targets.token_lm import soft_cap

    z = jnp.linspace(-100, 100, 201)
    capped = soft_cap(z, 15.0)
    assert float(jnp.max(jnp.abs(capped))) < 15.0
    np.testing.assert_allclose(soft_cap(jnp.asarray([0.01, -0.02]), 15.0), [0.01, -0.02], rtol=1e-5)
    cfg = dict(type="llama", vocab_size=16, d_model=8, n_heads=2, d_mlp=16, seq_len=6)
    plain = Llama(LlamaModel(**cfg), rngs=nnx.Rngs(0))
    capped_model = Llama(LlamaModel(**cfg, logit_soft_cap=0.5), rngs=nnx.Rngs(0))
    tokens = jnp.arange(12).reshape(2, 6) % 16
    np.testing.assert_allclose(capped_model(tokens), soft_cap(plain(tokens), 0.5), rtol=1e-5)
