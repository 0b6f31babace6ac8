"""S6A: adversarial (PGD) reconstruction masks, fresh and persistent."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from param_decomp.config.schema import Decomposition, Mesh, SparseFeatureData, TMSModel
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.decomposition.components import decomposed_linear
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.losses.adversarial import PersistentPGDRecon, PGDRecon
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.reconstruction import (
    StochasticRecon,
    StochasticReconLayerwise,
    StochasticReconSubset,
)
from param_decomp.losses.registry import loss_list_adapter
from param_decomp.objective import Objective
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.tms import TMS
from param_decomp.train.step import objective_loss_and_sources, place_and_jit

pytestmark = pytest.mark.runs_long(seconds=60)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SITES = ("linear1", "linear2")
C = 6


def _toy() -> tuple:
    target = TMS(TMSModel(type="tms", n_features=5, n_hidden=2), rngs=nnx.Rngs(0))
    cfg = Decomposition(C=C, sites=list(SITES))
    model = DecompositionModel(cfg, {"linear1": (5, 2), "linear2": (2, 5)}, rngs=nnx.Rngs(1))
    x = sample_sparse_features(jax.random.key(5), 32, 5, SparseFeatureData(feature_probability=0.3))
    return target, model, x


def _ctx(terms: tuple, key: int = 0, sources_override=None):  # noqa: ANN001, ANN202
    target, model, x = _toy()
    objective = Objective.from_terms(terms)
    sources = objective.draw_sources(jax.random.key(key), (x.shape[0],), model.site_names, C)
    if sources_override is not None:
        sources = sources_override(objective, sources)
    ctx = objective.context(target, model, x, sources, jnp.zeros(()))
    return objective, ctx, sources


def _value(terms: tuple, name: str, key: int = 0) -> float:
    objective, ctx, _ = _ctx(terms, key)
    return float(objective.evaluate(ctx)[1][f"train/loss/{name}"])


def test_s6a_yaml_round_trip_and_validation() -> None:
    adapter = loss_list_adapter()
    terms = adapter.validate_python(
        [
            {"type": "pgd_recon", "coeff": 1.0, "n_steps": 3, "routing": "subset"},
            {"type": "persistent_pgd_recon", "coeff": 1.0, "lr": 0.05, "n_warmup_steps": 1},
        ]
    )
    assert isinstance(terms[0], PGDRecon) and terms[0].spec().n_steps == 3
    assert isinstance(terms[1], PersistentPGDRecon) and terms[1].spec().persistent
    with pytest.raises(Exception, match="source_sharing"):
        adapter.validate_python(
            [{"type": "persistent_pgd_recon", "coeff": 1.0, "source_sharing": "position"}]
        )
    with pytest.raises(Exception, match="n_steps"):
        adapter.validate_python([{"type": "pgd_recon", "coeff": 1.0, "n_steps": -1}])


@functools.cache
def _stochastic_mean(routing: str) -> float:
    """The stochastic loss of a routing averaged over 8 source draws. It does not depend on
    the PGD's source sharing, so both sharings of a routing share it (computed once)."""
    stochastic_term = {
        "all": StochasticRecon,
        "subset": StochasticReconSubset,
        "each": StochasticReconLayerwise,
    }[routing](coeff=1.0)
    return float(
        np.mean([_value((stochastic_term,), stochastic_term.type, key=k) for k in range(8)])
    )


@pytest.mark.parametrize("sharing", ["batch", "position"])
@pytest.mark.parametrize("routing", ["all", "subset", "each"])
def test_s6a_3_the_adversary_ascends(sharing: str, routing: str) -> None:
    """PGD's loss >= the loss at its own initial sources and >= the stochastic loss of the
    same routing (S6.1-S6.3), averaged over 8 source draws."""
    common = {"source_sharing": sharing, "routing": routing}
    pgd = _value((PGDRecon(coeff=1.0, n_steps=20, step_size=0.1, **common),), "pgd_recon")
    start = _value((PGDRecon(coeff=1.0, n_steps=0, **common),), "pgd_recon")
    stochastic = _stochastic_mean(routing)
    print(f"{sharing}/{routing}: pgd {pgd:.4e}, initial {start:.4e}, stochastic {stochastic:.4e}")
    assert pgd > start and pgd > stochastic, (pgd, start, stochastic)


def test_s6a_1_sources_stay_in_unit_interval() -> None:
    for sharing in ("batch", "position"):
        term = PGDRecon(coeff=1.0, n_steps=4, step_size=0.7, source_sharing=sharing)
        _, ctx, sources = _ctx((term,))
        final = ctx.adversary_sources[term.spec()]
        init = sources[term.spec()]["init"]
        for s in SITES:
            assert (
                final[s].shape == init[s].shape == ((C + 1,) if sharing == "batch" else (32, C + 1))
            )
            assert float(final[s].min()) >= 0.0 and float(final[s].max()) <= 1.0
            # a step of 0.7 from U(0,1) must have been clamped somewhere
            assert np.any((np.asarray(final[s]) == 0.0) | (np.asarray(final[s]) == 1.0))


@pytest.mark.parametrize("sharing", ["batch", "position"])
def test_s6a_2_zero_steps_is_the_masked_loss_at_the_initial_sources(sharing: str) -> None:
    """n_steps = 0: mse of the masked model (S2.1/S2.2 through `decomposed_linear`) at init."""
    target, model, x = _toy()
    term = PGDRecon(coeff=1.0, n_steps=0, source_sharing=sharing)
    objective, ctx, sources = _ctx((term,))
    init = sources[term.spec()]["init"]
    VU = model.all_VU()

    def site_fn(name: str, h: jax.Array, W: jax.Array) -> jax.Array:
        s = jnp.broadcast_to(init[name], (*h.shape[:-1], C + 1))
        mask = ctx.ci_lower[name] + (1 - ctx.ci_lower[name]) * s[..., :C]
        return decomposed_linear(h, *VU[name], mask, W, s[..., C])

    expected = jnp.mean((target(x, site_fn) - ctx.clean_output) ** 2)
    got = objective.evaluate(ctx)[1]["train/loss/pgd_recon"]
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    # ones with the delta channel on: mask 1, delta 1, the clean output exactly
    ones = PGDRecon(coeff=1.0, n_steps=0, init="ones")
    assert _value((ones,), "pgd_recon") == 0.0


def test_s6a_4_gradient_flows_through_the_final_loss_only() -> None:
    """d(term)/d(params) == gradient of the loss at stop_gradient(final sources)."""
    target, model, x = _toy()
    graphdef, params = nnx.split(model)
    term = PGDRecon(coeff=1.0, n_steps=5, step_size=0.1)
    spec = term.spec()
    objective = Objective.from_terms((term,))
    fixed = PGDRecon(coeff=1.0, n_steps=0)  # the same spec apart from n_steps
    objective0 = Objective.from_terms((fixed,))
    drawn = objective.draw_sources(jax.random.key(0), (32,), SITES, C)

    def loss(p: nnx.State, obj: Objective, sources: dict) -> tuple[jax.Array, dict]:
        ctx = obj.context(target, nnx.merge(graphdef, p), x, sources, jnp.zeros(()))
        return obj.evaluate(ctx)[0], next(iter(ctx.adversary_sources.values()))

    (_, final), grads = jax.value_and_grad(loss, has_aux=True)(params, objective, drawn)
    at_final = {fixed.spec(): {"init": final, "routed": drawn[spec]["routed"]}}
    at_init = {fixed.spec(): {"init": drawn[spec]["init"], "routed": drawn[spec]["routed"]}}
    grads_final = jax.grad(lambda p: loss(p, objective0, at_final)[0])(params)
    grads_init = jax.grad(lambda p: loss(p, objective0, at_init)[0])(params)
    for a, b in zip(*map(jax.tree.leaves, (grads, grads_final)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    diff = max(
        float(jnp.max(jnp.abs(a - c)))
        for a, c in zip(*map(jax.tree.leaves, (grads, grads_init)), strict=True)
    )
    assert diff > 1e-4, "the ascent did not move the sources enough for the check to bite"


def _persistent_run(terms: tuple, mesh_cfg: Mesh = Mesh(data=1), n_devices: int = 1):  # noqa: ANN202, B008
    target, model, _ = _toy()
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    objective = Objective.from_terms(terms)
    plan = PlacementPlan(build_mesh(mesh_cfg, jax.devices()[:n_devices]))
    compiled = place_and_jit(
        objective,
        graphdef,
        target_graphdef,
        params,
        target_state,
        optax.adamw(1e-2),
        10,
        plan,
        2,
        jax.random.key(7),
    )
    data = SparseFeatureData(feature_probability=0.3)
    batches = [sample_sparse_features(jax.random.key(100 + i), 32, 5, data) for i in range(6)]
    return objective, graphdef, target_graphdef, compiled, batches


def test_s6a_5_persistent_sources_live_in_the_state_and_ascend() -> None:
    term = PersistentPGDRecon(coeff=1.0, lr=0.05, n_warmup_steps=1, step_size=0.05)
    terms = (Faithfulness(coeff=1.0), StochasticRecon(coeff=1.0), term)
    objective, graphdef, target_graphdef, compiled, batches = _persistent_run(terms)
    state = compiled.state
    assert state.adversary is not None and set(state.adversary["sources"]) == set(SITES)
    only = Objective.from_terms((PersistentPGDRecon(coeff=1.0, n_warmup_steps=0),))

    @jax.jit
    def term_at(sources: dict, params: nnx.State, key: jax.Array, batch: jax.Array) -> jax.Array:
        """The term at given sources, params and batch (the step's own key and progress)."""
        _, (m, _) = objective_loss_and_sources(
            only,
            graphdef,
            target_graphdef,
            params,
            compiled.target_state,
            batch,
            key,
            jnp.zeros(()),
            sources,
        )
        return m["train/loss/persistent_pgd_recon"]

    for i in range(3):
        before = jax.tree.map(np.asarray, state.adversary["sources"])
        # the step donates its input state: keep host copies
        params_before = jax.tree.map(np.asarray, state.params)
        step_key = jax.random.fold_in(state.key, state.step)
        state, _ = compiled.train_step(state, compiled.target_state, batches[i])
        after = jax.tree.map(np.asarray, state.adversary["sources"])
        assert int(state.adversary["opt_state"][0].count) == i + 1
        for s in SITES:
            assert after[s].shape == (C + 1,)
            assert after[s].min() >= 0.0 and after[s].max() <= 1.0
            assert np.any(after[s] != before[s])
        # the stored sources make the loss (at the step's own params and batch) larger
        gain = term_at(after, params_before, step_key, batches[i])
        base = term_at(before, params_before, step_key, batches[i])
        print(f"step {i}: persistent term {float(base):.4e} -> {float(gain):.4e}")
        assert gain > base, i


def _tree_rel(a: object, b: object) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-6)))
    return worst


def _trajectory(problem: tuple, mesh_cfg: Mesh, n_devices: int, n_steps: int = 3) -> tuple:
    sys.path.insert(0, str(REPO / "tests" / "sharding"))
    from trajectory_problem import build_run

    compiled, batches = build_run(problem, mesh_cfg, jax.devices()[:n_devices])
    state, history = compiled.state, []
    for batch in batches[:n_steps]:
        state, metrics = compiled.train_step(
            state, compiled.target_state, jax.device_put(batch, compiled.batch_sharding)
        )
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    host = jax.tree.map(np.asarray, jax.device_get((state.params, state.adversary)))
    return history, nnx.to_pure_dict(host[0]), host[1]


@pytest.fixture(scope="module")
def lm_pgd_reference() -> tuple:
    """The LM problem of the mesh tests plus subset-routed fresh and persistent PGD, and its
    3-step trajectory on one device."""
    sys.path.insert(0, str(REPO / "tests" / "sharding"))
    from trajectory_problem import lm_problem

    target, cfg, shapes, batches, terms = lm_problem()
    terms = (
        *terms,
        PGDRecon(coeff=1.0, n_steps=2, step_size=0.1, routing="subset", distance="kl"),
        PersistentPGDRecon(coeff=1.0, lr=0.05, routing="subset", distance="kl"),
    )
    problem = (target, cfg, shapes, batches, terms)
    return problem, _trajectory(problem, Mesh(data=1), 1)


@pytest.mark.parametrize(
    "mesh_cfg", [Mesh(data=4), Mesh(data=2, tensor=2)], ids=["data4", "data2_tensor2"]
)
def test_s6a_s13_3_lm_subset_pgd_is_mesh_invariant(lm_pgd_reference: tuple, mesh_cfg: Mesh) -> None:
    """4 simulated devices vs 1, 3 steps: losses, params and the persistent adversary agree."""
    problem, ref = lm_pgd_reference
    got = _trajectory(problem, mesh_cfg, 4)
    assert "train/loss/persistent_pgd_recon" in ref[0][0] and "train/loss/pgd_recon" in ref[0][0]
    for name, a, b in zip(("losses", "params", "adversary"), got, ref, strict=True):
        rel = _tree_rel(a, b)
        print(f"{mesh_cfg} vs single: {name} worst rel {rel:.2e}")
        assert rel <= 1e-5, (name, rel)
