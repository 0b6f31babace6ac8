"""S10.4: gradient accumulation over `train.micro_batches` micro-batches, one update.

Without random sources a micro-batched step is the full-batch step up to float rounding (the
frequency term reads the global component means); with a stochastic term only the sources
differ. The steps are SGD: Adam's first update is about lr sign(g), which would hide a wrong
gradient's size.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import check_mesh
from param_decomp.config.schema import Decomposition, Mesh, SparseFeatureData, TMSModel
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.losses.adversarial import PGDRecon
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import FrequencyBlock, ImportanceMinimality
from param_decomp.losses.reconstruction import CIMaskedRecon, StochasticRecon
from param_decomp.objective import Objective
from param_decomp.plan.abstract_step import build_abstract_step
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.runconfig.target_config import resolve_target_config
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.tms import TMS
from param_decomp.train.micro_batches import split_micro_batches
from param_decomp.train.step import init_state, make_train_step, place_and_jit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ROWS = 16
REL = 1e-5  # normwise max|x - y| / max|y|
DETERMINISTIC = (
    Faithfulness(coeff=1.0),
    ImportanceMinimality(
        coeff=1e-2, pnorm=1.0, frequency=FrequencyBlock(coeff=1e-1, reference_token_count=512)
    ),
    CIMaskedRecon(coeff=1.0),
)


@functools.cache
def _step(terms: tuple, micro_batches: int, lr: float) -> tuple[dict[str, float], Any, Any]:
    """One SGD step on a 1-hidden-layer TMS, batch sharded over 4 devices (mesh data 4): the
    metrics, the params before and after."""
    target = TMS(TMSModel(type="tms", n_features=8, n_hidden=4), rngs=nnx.Rngs(0))
    shapes = {k: tuple(v.shape) for k, v in target.site_weights().items()}
    cfg = Decomposition(
        C=8, sites=list(shapes), ci_function={"type": "per_component_mlp", "hidden": [8]}
    )
    graphdef, params = nnx.split(DecompositionModel(cfg, shapes, rngs=nnx.Rngs(1)))
    target_graphdef, target_state = nnx.split(target)
    plan = PlacementPlan(build_mesh(Mesh(data=4), jax.devices()[:4]))
    compiled = place_and_jit(
        Objective.from_terms(terms),
        graphdef,
        target_graphdef,
        params,
        target_state,
        optax.sgd(lr),
        10,
        plan,
        2,
        jax.random.key(7),
        micro_batches=micro_batches,
    )
    x = sample_sparse_features(
        jax.random.key(3), ROWS, 8, SparseFeatureData(feature_probability=0.3)
    )
    before = jax.tree.map(np.asarray, compiled.state.params)
    batch = jax.device_put(x, compiled.batch_sharding)
    state, metrics = compiled.train_step(compiled.state, compiled.target_state, batch)
    after = jax.tree.map(np.asarray, state.params)
    return {k: float(v) for k, v in metrics.items()}, before, after


def _normwise(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))


def test_split_is_strided_so_each_micro_batch_spans_every_shard() -> None:
    """S10.4: micro-batch m is the rows i with i mod k == m."""
    batch = jnp.arange(12)[:, None] * jnp.ones((1, 3))
    micro = split_micro_batches(batch, 3)
    assert micro.shape == (3, 4, 3)
    for m in range(3):
        np.testing.assert_array_equal(micro[m, :, 0], np.arange(m, 12, 3))


@pytest.mark.parametrize("k", [2, 4])
def test_s10_4_micro_batched_step_equals_the_full_batch_step(k: int) -> None:
    """S10.4 on 4 devices: with no random sources (faithfulness, importance minimality with a
    frequency block, ci-masked recon) one SGD step with k micro-batches moves the params as
    the full-batch step does and logs the same losses, within 1e-5 normwise. The frequency
    part is nonlinear in the component means: without the global-means rule the update is off
    by far more than that (checked by hand when this test was written)."""
    full, before, after_full = _step(DETERMINISTIC, 1, 1.0)
    micro, _, after_micro = _step(DETERMINISTIC, k, 1.0)
    moved_full = jax.tree.map(np.subtract, after_full, before)
    moved_micro = jax.tree.map(np.subtract, after_micro, before)
    for path, a, b in zip(
        jax.tree_util.tree_leaves_with_path(moved_micro),
        jax.tree.leaves(moved_micro),
        jax.tree.leaves(moved_full),
        strict=True,
    ):
        assert np.max(np.abs(b)) > 0, path[0]
        assert _normwise(a, b) <= REL, (jax.tree_util.keystr(path[0]), _normwise(a, b))
    assert set(micro) == set(full)
    for key, value in full.items():
        assert abs(micro[key] - value) <= REL * max(abs(value), 1e-30), (key, micro[key], value)


def test_s10_4_stochastic_term_runs_micro_batched() -> None:
    """S10.4: with a stochastic recon term (each micro-batch's sources from fold_in(key, m))
    two micro-batches give finite losses near the full batch's; the deterministic terms'
    values are the full batch's."""
    terms = (*DETERMINISTIC, StochasticRecon(coeff=1.0))
    full, _, _ = _step(terms, 1, 1e-2)
    micro, _, after = _step(terms, 2, 1e-2)
    assert all(np.isfinite(v) for v in micro.values())
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(after))
    recon = "train/loss/stochastic_recon"
    assert micro[recon] != full[recon]  # other sources
    np.testing.assert_allclose(micro[recon], full[recon], rtol=0.5)
    for key in ("faithfulness", "importance_minimality", "frequency", "ci_masked_recon"):
        k = f"train/loss/{key}"
        np.testing.assert_allclose(micro[k], full[k], rtol=REL, err_msg=k)


def test_s10_4_one_micro_batch_is_todays_graph() -> None:
    """S10.4: micro_batches 1 traces to the step built without it (no scan; the goldens pin
    its numerics); 2 accumulates in scans."""
    target = TMS(TMSModel(type="tms", n_features=5, n_hidden=2), rngs=nnx.Rngs(0))
    cfg = Decomposition(C=4, sites=["linear1", "linear2"])
    graphdef, params = nnx.split(
        DecompositionModel(cfg, {"linear1": (5, 2), "linear2": (2, 5)}, rngs=nnx.Rngs(1))
    )
    target_graphdef, target_state = nnx.split(target)
    objective = Objective.from_terms(DETERMINISTIC)
    optimizer = optax.sgd(1.0)

    state = init_state(params, optimizer, jax.random.key(0))
    x = jnp.ones((8, 5))

    def jaxpr(*extra: int) -> str:
        step = make_train_step(
            objective, graphdef, target_graphdef, optimizer, 10, "float32", *extra
        )
        return str(jax.make_jaxpr(step)(state, target_state, x))

    default = jaxpr()
    assert jaxpr(1) == default
    assert "scan" not in default
    assert jaxpr(2).count("scan[") >= 2  # the global means, then the gradients


def _tms_yaml(tmp_path: Path, micro_batches: int, extra_loss: dict | None = None) -> Path:
    raw = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    raw["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    raw["train"]["micro_batches"] = micro_batches
    if extra_loss is not None:
        raw["losses"].append(extra_loss)
    path = tmp_path / "decompose.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_s10_4_batch_must_split_over_micro_batches_and_shards(tmp_path: Path) -> None:
    """S10.4: train.batch_size (256) % (micro_batches x data x fsdp) is checked with the mesh,
    naming train.micro_batches and the product."""
    cfg = load_decompose_config(_tms_yaml(tmp_path, 16))
    check_mesh(cfg, 4, "x.yaml")  # 256 = 16 x 4 x 4
    cfg = load_decompose_config(_tms_yaml(tmp_path, 3))
    with pytest.raises(ConfigError) as info:
        check_mesh(cfg, 4, "x.yaml")
    text = str(info.value)
    assert "train.micro_batches" in text and "3 x 4 = 12" in text, text
    with pytest.raises(ConfigError, match="train.micro_batches"):
        load_decompose_config(_tms_yaml(tmp_path, 0))


@pytest.mark.parametrize("adversarial", ["pgd_recon", "persistent_pgd_recon"])
def test_s10_4_adversarial_terms_refuse_micro_batches(tmp_path: Path, adversarial: str) -> None:
    """S10.4: an adversarial term's ascent would see one micro-batch: refused at load, naming
    train.micro_batches and the term; the step builder refuses it too."""
    path = _tms_yaml(tmp_path, 2, {"type": adversarial, "coeff": 1.0})
    with pytest.raises(ConfigError) as info:
        load_decompose_config(path)
    text = str(info.value)
    assert "train.micro_batches" in text and adversarial in text and "micro-batch" in text, text
    load_decompose_config(_tms_yaml(tmp_path, 1, {"type": adversarial, "coeff": 1.0}))
    objective = Objective.from_terms((PGDRecon(coeff=1.0),))
    with pytest.raises(ValueError, match="adversarial"):
        make_train_step(objective, None, None, optax.sgd(1.0), 10, "float32", 2)  # type: ignore[arg-type]


def test_s10_4_the_planner_builds_the_micro_batched_step(tmp_path: Path) -> None:
    """S10.4/S13.5: `plan` lowers the step with the config's micro-batches (a loop over them),
    so its memory report reflects the lever (measured on tms_tiny, 4 devices: XLA temporaries
    230 KB at 1 micro-batch, 60 KB at 4)."""
    lowered = {}
    for k in (1, 4):
        path = _tms_yaml(tmp_path, k)
        cfg = load_decompose_config(path)
        target_cfg = resolve_target_config(cfg, str(path))
        lowered[k] = build_abstract_step(cfg, target_cfg).lower().as_text()
    # the 256 x 5 batch split into 4 strided micro-batches of 64 rows, one at a time in the loop
    assert "tensor<4x64x5xf32>" in lowered[4] and "tensor<64x5xf32>" in lowered[4]
    assert "x64x5xf32" not in lowered[1] and "tensor<64x5xf32>" not in lowered[1]
