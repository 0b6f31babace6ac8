"""Output distances: recon golden cases (values + grads) and basic properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from param_decomp.goldens.recon import evaluate_recon
from param_decomp.goldens.registry import FAMILIES, Comparison
from param_decomp.losses.distances import OUTPUT_DISTANCES, kl_per_position_mean, mse

GOLDENS = Path(__file__).resolve().parents[2].parent / "shared" / "goldens"


def _load_cases() -> list[dict[str, Any]]:
    data = json.loads((GOLDENS / "recon.json").read_text())
    assert data["family"] == "recon"
    assert data["cases"], "golden file has no cases"
    return data["cases"]


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
def test_recon_golden(case: dict[str, Any]) -> None:
    comparisons = evaluate_recon(case)
    assert [c.name for c in comparisons] == list(case["expected"])
    _assert_close(comparisons, case["atol"], case["rtol"])


def test_family_registered() -> None:
    assert FAMILIES["recon"] is evaluate_recon


def test_unknown_key_raises() -> None:
    case = {**_load_cases()[0], "expected": {"grad_cosine_masked": 0.0}}
    with pytest.raises(ValueError):
        evaluate_recon(case)


def test_output_distances_registry() -> None:
    assert OUTPUT_DISTANCES == {"mse": mse, "kl": kl_per_position_mean}


def _logits(seed: int, shape: tuple[int, ...] = (3, 5, 11)) -> jax.Array:
    return 2.0 * jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def test_kl_identical_is_zero() -> None:
    x = _logits(0)
    assert float(kl_per_position_mean(x, x)) == 0.0
    assert float(kl_per_position_mean(x, x + 5.0)) == pytest.approx(0.0, abs=1e-6)


def test_kl_positive_and_directional() -> None:
    a, b = _logits(1), _logits(2)
    kl_ab, kl_ba = float(kl_per_position_mean(a, b)), float(kl_per_position_mean(b, a))
    assert kl_ab > 0.0 and kl_ba > 0.0
    p_clean = jax.nn.softmax(b, axis=-1)
    want = jnp.mean(jnp.sum(p_clean * (jax.nn.log_softmax(b, -1) - jax.nn.log_softmax(a, -1)), -1))
    np.testing.assert_allclose(kl_ab, want, rtol=1e-5)


def test_kl_grad_is_softmax_difference() -> None:
    masked, clean = _logits(3), _logits(4)
    grad = jax.grad(kl_per_position_mean)(masked, clean)
    n_pos = masked.shape[0] * masked.shape[1]
    want = (jax.nn.softmax(masked, -1) - jax.nn.softmax(clean, -1)) / n_pos
    np.testing.assert_allclose(grad, want, atol=1e-7)


def test_mse_is_element_mean() -> None:
    a, b = _logits(5, (4, 6)), _logits(6, (4, 6))
    np.testing.assert_allclose(mse(a, b), np.mean((np.asarray(a) - np.asarray(b)) ** 2), rtol=1e-6)
    assert float(mse(a, a)) == 0.0
