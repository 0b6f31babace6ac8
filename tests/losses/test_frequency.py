"""Frequency term invariants S8.1-S8.4."""

import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pydantic import ValidationError

from param_decomp.losses.importance import (
    FrequencyBlock,
    ImportanceMinimality,
    PNormPsi,
    component_means,
    frequency,
)


def _f(ci: jax.Array, p: float = 1.0) -> jax.Array:
    return component_means(PNormPsi(p, None, 0.0, 1.0, 1e-12)(ci, jnp.zeros(())))


def test_s8_2_frequency_is_batch_invariant_at_fixed_rate() -> None:
    key = jax.random.key(0)
    ci = (jax.random.uniform(key, (64, 8, 12)) > 0.9).astype(jnp.float32)
    doubled = jnp.concatenate([ci, ci], axis=0)  # same firing rate, twice the B*T
    a_ref = 4096.0
    assert float(frequency({"s": _f(ci)}, a_ref)) == pytest.approx(
        float(frequency({"s": _f(doubled)}, a_ref)), rel=1e-6
    )
    # had a' been tied to B*T, the value would move with the batch size
    tied_small = float(frequency({"s": _f(ci)}, ci.shape[0] * ci.shape[1]))
    tied_big = float(frequency({"s": _f(doubled)}, doubled.shape[0] * doubled.shape[1]))
    assert abs(tied_big - tied_small) > 1e-3 * abs(tied_small)


def test_s8_3_sites_are_not_pooled_inside_the_log() -> None:
    f1, f2 = jnp.array([0.1, 0.2]), jnp.array([0.3])
    separate = float(frequency({"a": f1, "b": f2}, 100.0))
    expected = float(jnp.sum(f1 * jnp.log2(1 + 100 * f1)) + jnp.sum(f2 * jnp.log2(1 + 100 * f2)))
    assert separate == pytest.approx(expected, rel=1e-6)


def test_s8_4_legacy_beta_is_rejected_with_the_migration() -> None:
    with pytest.raises(ValidationError) as err:
        ImportanceMinimality(**{"coeff": 0.5, "pnorm": 1.0, "beta": 0.2})
    msg = str(err.value)
    assert "frequency" in msg and "reference_token_count" in msg and "0.1" in msg


def test_s8_4_migrated_config_reproduces_legacy_rolled_value(goldens_dir: Path) -> None:
    """The migrated term (coeff 1, frequency {coeff: beta, reference_token_count: B*T}) gives the
    legacy rolled value bit for bit in float32, and matches the reference golden."""
    data = json.loads((goldens_dir / "imp_min.json").read_text())
    for case in data["cases"]:
        i = case["inputs"]
        if i["p_final"] is not None:
            continue
        ci = {s: jnp.asarray(np.asarray(v), jnp.float32) for s, v in i["ci_upper"].items()}
        beta, bt, p = float(i["beta"]), float(i["global_batch_positions"]), float(i["p_start"])
        term = (
            ImportanceMinimality(
                coeff=1.0, pnorm=p, frequency=FrequencyBlock(coeff=beta, reference_token_count=bt)
            )
            if beta > 0
            else ImportanceMinimality(coeff=1.0, pnorm=p)
        )
        psi = term.psi()
        f = {s: component_means(psi(c, jnp.zeros(()))) for s, c in ci.items()}
        ctx = SimpleNamespace(component_means={psi: f}, progress=jnp.zeros(()))
        migrated = term(ctx).weighted
        rolled = sum(jnp.sum(fc * (1.0 + beta * jnp.log2(1.0 + bt * fc))) for fc in f.values())
        assert np.float32(migrated) == np.float32(rolled), (case["name"], migrated, rolled)
        want = float(case["expected"]["loss"])
        assert abs(float(migrated) - want) <= case["atol"] + case["rtol"] * abs(want)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        (
            {"coeff": 1.0, "frequency": {"coeff": 1.0, "reference_token_count": 0}},
            "reference_token_count",
        ),
        ({"coeff": 1.0, "pnorm": 0.0}, "pnorm"),
        ({"coeff": -1.0}, "coeff"),
    ],
)
def test_invalid_importance_entries_are_config_errors(entry: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        ImportanceMinimality(**entry)
    assert needle in str(err.value)
