"""S7A: the density target's Lagrange multipliers. The dual step rises while a site is denser
than its target and falls while it is sparser (S7A.2); a primal-dual toy whose answer is known
reaches it (S7A.2); in a real decomposition the multipliers move the right way, reach the
checkpoint and resume bit for bit (S7A.4); the config refuses nonsense (S7A.1, S7A.3)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from cli_runner import REPO
from cli_runner import run_cli as _cli

from param_decomp.losses.density_target import DensityTarget, dual_update
from param_decomp.losses.importance import ImportanceMinimality
from param_decomp.objective import Objective

pytestmark = pytest.mark.runs_long(seconds=20)

FIXTURES = REPO / "tests" / "fixtures"


def test_s7a_2_dual_step_direction_and_bounds() -> None:
    spec = DensityTarget(l0_frac=0.1, dual_lr=0.1, min_multiplier=0.5, max_multiplier=2.0)
    one = jnp.ones((), jnp.float32)
    assert float(dual_update(one, jnp.asarray(0.3), spec)) > 1.0  # violated: rises
    assert float(dual_update(one, jnp.asarray(0.02), spec)) < 1.0  # met with room: falls
    assert float(dual_update(one, jnp.asarray(0.1), spec)) == pytest.approx(1.0)  # at target
    # the relative violation is clipped to [-1, 1]: one step moves log lambda by <= dual_lr
    assert float(dual_update(one, jnp.asarray(1.0), spec)) == pytest.approx(np.exp(0.1))
    assert float(dual_update(one, jnp.asarray(0.0), spec)) == pytest.approx(np.exp(-0.1))
    # and lambda stays inside [min_multiplier, max_multiplier]
    assert float(dual_update(jnp.asarray(1.99), jnp.asarray(1.0), spec)) == pytest.approx(2.0)
    assert float(dual_update(jnp.asarray(0.51), jnp.asarray(0.0), spec)) == pytest.approx(0.5)


def test_s7a_2_primal_dual_toy_reaches_the_known_fixed_point() -> None:
    """C gates g_i = sigmoid(z_i) pay reconstruction w_i (1 - g_i)^2 with distinct w_i and
    importance lambda * g_i. The target L0 of k/C (gates above 0.1) is met at the fixed point
    exactly when the k gates with the largest w_i are on and the rest off; the multiplier
    settles between the k-th and (k+1)-th w_i's break-even prices."""
    C, k = 8, 3
    w = jnp.asarray([8.0, 6.0, 5.0, 0.6, 0.5, 0.4, 0.3, 0.2])
    spec = DensityTarget(l0_frac=k / C, dual_lr=0.02, threshold=0.1)

    def loss(z: jax.Array, lam: jax.Array) -> jax.Array:
        g = jax.nn.sigmoid(z)
        return jnp.sum(w * (1.0 - g) ** 2) + lam * jnp.sum(g)

    def step(carry: tuple[jax.Array, jax.Array], _: None) -> tuple[tuple, jax.Array]:
        z, lam = carry
        z = z - 0.5 * jax.grad(loss)(z, lam)
        l0_frac = jnp.mean((jax.nn.sigmoid(z) > spec.threshold).astype(jnp.float32))
        return (z, dual_update(lam, l0_frac, spec)), l0_frac

    start = (jnp.zeros(C), jnp.asarray(0.05, jnp.float32))  # every gate on, far too dense
    (z, lam), l0_trace = jax.lax.scan(step, start, None, length=4000)
    on = np.asarray(jax.nn.sigmoid(z) > spec.threshold)
    assert on.tolist() == [True] * k + [False] * (C - k)
    assert float(np.mean(np.asarray(l0_trace[-500:]))) == pytest.approx(k / C)
    assert float(l0_trace[0]) == 1.0  # it started violated, so the multiplier had to rise
    assert float(lam) > 0.05


def test_s7a_3_one_constrained_term_and_ordered_bounds() -> None:
    with pytest.raises(ValueError, match="min_multiplier <= 1 <= max_multiplier"):
        DensityTarget(l0_frac=0.1, min_multiplier=2.0)
    with pytest.raises(ValueError):
        DensityTarget(l0_frac=0.0)
    from param_decomp.losses.importance import SmoothL0

    target = DensityTarget(l0_frac=0.1)
    with pytest.raises(ValueError, match="more than one importance term"):
        Objective.from_terms(
            [
                ImportanceMinimality(coeff=1.0, density_target=target),
                SmoothL0(coeff=1.0, density_target=target),
            ]
        )


def _config(tmp_path: Path, name: str, steps: int, density: dict) -> Path:
    cfg = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    cfg["run_name"] = name
    cfg["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    cfg["losses"][1]["density_target"] = density
    cfg["train"].update(steps=steps, batch_size=64, log_every=1)
    cfg["train"]["faithfulness_warmup"]["steps"] = 2
    cfg["eval"] = {"n_batches": 1, "batch_size": 64, "figures": False, "pgd_steps": 0}
    cfg["checkpointing"] = {"every": 100, "keep": 2}
    path = tmp_path / f"{name}{steps}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _multipliers(run: Path, site: str) -> list[float]:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return [r[f"train/density/multiplier/{site}"] for r in records]


def test_s7a_4_multipliers_move_with_the_constraint_and_resume_exactly(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    """Too dense (every component with CI > 0 counted, target 1 %): every multiplier rises each
    step. Met (only CI > 0.99 counted, target 50 %): every multiplier falls. The dense run
    stopped at 3 and resumed to 6 equals 6 straight steps, multipliers included."""
    dense = {"l0_frac": 0.01, "threshold": 0.0, "dual_lr": 0.1}
    sparse = {"l0_frac": 0.5, "threshold": 0.99, "dual_lr": 0.1}
    trained_targets(tmp_path / "a", FIXTURES / "tms_tiny_target.yaml")
    shutil.copytree(tmp_path / "a" / "targets", tmp_path / "b" / "targets")
    for name, density, root in (("dense", dense, "a"), ("sparse", sparse, "a")):
        done = _cli("decompose", str(_config(tmp_path, name, 6, density)), "--runs-dir",
                    str(tmp_path / root))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    for site in ("linear1", "linear2"):
        rising = _multipliers(tmp_path / "a" / "dense", site)
        falling = _multipliers(tmp_path / "a" / "sparse", site)
        assert rising[0] == falling[0] == 1.0  # the configured coefficient at step 0
        assert all(b > a for a, b in zip(rising, rising[1:], strict=False)), rising
        assert all(b < a for a, b in zip(falling, falling[1:], strict=False)), falling

    first = _cli("decompose", str(_config(tmp_path, "dense", 3, dense)), "--runs-dir",
                 str(tmp_path / "b"))  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _cli("decompose", str(_config(tmp_path, "dense", 6, dense)), "--runs-dir",
                   str(tmp_path / "b"), "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 3" in resumed.stdout
    for site in ("linear1", "linear2"):
        assert _multipliers(tmp_path / "b" / "dense", site) == _multipliers(
            tmp_path / "a" / "dense", site
        )

    import orbax.checkpoint as ocp

    def saved(root: str) -> dict:
        with ocp.CheckpointManager(tmp_path / root / "dense" / "checkpoints") as manager:
            args = ocp.args.Composite(training=ocp.args.StandardRestore())
            return manager.restore(manager.latest_step(), args=args)["training"]["multipliers"]

    a, b = saved("a"), saved("b")
    assert sorted(a) == ["linear1", "linear2"]
    for site in a:
        np.testing.assert_array_equal(np.asarray(a[site]), np.asarray(b[site]))
        assert float(a[site]) > 1.0
