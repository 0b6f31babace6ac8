"""S13.3: the numbers do not depend on the mesh; S8.3: frequency sees global sums.

Runs 5 steps of the full loss set (frequency included) on a toy target and on a tiny LM-shaped
input, on meshes (1), (data=4), (data=2, tensor=2), (fsdp=4), and compares per-step losses and the
final parameters with the single-device run.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from param_decomp.config.schema import Decomposition, LlamaModel, Mesh, SparseFeatureData, TMSModel
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import FrequencyBlock, ImportanceMinimality, PNormPsi, component_means, frequency
from param_decomp.losses.lm_terms import MaskedCrossEntropy
from param_decomp.losses.reconstruction import StochasticRecon, StochasticReconLayerwise, StochasticReconSubset
from param_decomp.objective import Objective
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.llama import Llama
from param_decomp.targets.tms import TMS
from param_decomp.train.step import place_and_jit

MESHES = {
    "single": (Mesh(data=1), 1),
    "data4": (Mesh(data=4), 4),
    "data2_tensor2": (Mesh(data=2, tensor=2), 4),
    "fsdp4": (Mesh(data=1, fsdp=4, shard_target_weights=True), 4),
}
N_STEPS = 5
REL = 1e-5


def _toy_problem() -> tuple:
    target = TMS(TMSModel(type="tms", n_features=8, n_hidden=4, n_hidden_layers=1), rngs=nnx.Rngs(0))
    shapes = {k: tuple(v.shape) for k, v in target.site_weights().items()}
    cfg = Decomposition(C=8, sites=list(shapes), ci_function={"type": "per_component_mlp", "hidden": [8]})
    data = SparseFeatureData(feature_probability=0.2)
    batches = [sample_sparse_features(jax.random.key(100 + i), 16, 8, data) for i in range(N_STEPS)]
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(coeff=1e-2, pnorm=1.0, p_anneal_final_p=0.5,
                             frequency=FrequencyBlock(coeff=1e-3, reference_token_count=512)),
        StochasticRecon(coeff=1.0),
        StochasticReconLayerwise(coeff=1.0),
        StochasticReconSubset(coeff=1.0, source="binomial"),
    )
    return target, cfg, shapes, batches, terms


def _lm_problem() -> tuple:
    target = Llama(LlamaModel(type="llama", vocab_size=16, d_model=8, n_heads=2, d_mlp=16), rngs=nnx.Rngs(0))
    sites = ["layers.0.mlp.up", "layers.0.mlp.down", "layers.0.attn.q"]
    shapes = {k: tuple(v.shape) for k, v in target.site_weights().items() if k in sites}
    cfg = Decomposition(C=8, sites=sites, ci_function={"type": "global_mlp", "hidden": [8]})
    batches = [jax.random.randint(jax.random.key(200 + i), (8, 6), 0, 16) for i in range(N_STEPS)]
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(coeff=1e-2, pnorm=2.0, frequency=FrequencyBlock(coeff=1e-3, reference_token_count=256)),
        StochasticRecon(coeff=1.0, distance="kl"),
        StochasticReconLayerwise(coeff=1.0, distance="kl"),
        MaskedCrossEntropy(coeff=0.5, routing="ci", delta_component=False),
    )
    return target, cfg, shapes, batches, terms


def _trajectory(problem: tuple, mesh_cfg: Mesh, n_devices: int) -> tuple[list[dict], dict]:
    target, cfg, shapes, batches, terms = problem
    mesh = build_mesh(mesh_cfg, jax.devices()[:n_devices])
    plan = PlacementPlan(mesh, mesh_cfg.shard_target_weights)
    model = DecompositionModel(cfg, shapes, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    objective = Objective.from_terms(terms)
    compiled = place_and_jit(
        objective, graphdef, target_graphdef, params, target_state, optax.adamw(1e-2), N_STEPS, plan,
        cfg.C, batches[0].ndim, jax.random.key(7),
    )
    state, history = compiled.state, []
    for batch in batches:
        state, metrics = compiled.train_step(state, compiled.target_state, jax.device_put(batch, compiled.batch_sharding))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    final = jax.tree.map(np.asarray, jax.device_get(state.params))
    return history, nnx.to_pure_dict(final)


def _worst_rel(a: object, b: object) -> float:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y) / (np.abs(y) + 1e-6))))
    return worst


@pytest.fixture(scope="module", params=["toy", "lm"])
def problem_and_reference(request: pytest.FixtureRequest) -> tuple:
    problem = _toy_problem() if request.param == "toy" else _lm_problem()
    return problem, _trajectory(problem, *MESHES["single"])


@pytest.mark.parametrize("mesh_name", ["data4", "data2_tensor2", "fsdp4"])
def test_s13_3_trajectory_is_mesh_invariant(problem_and_reference: tuple, mesh_name: str) -> None:
    problem, (ref_history, ref_params) = problem_and_reference
    history, params = _trajectory(problem, *MESHES[mesh_name])
    assert set(history[0]) == set(ref_history[0])
    assert "train/loss/frequency" in history[0]
    loss_rel = _worst_rel(history, ref_history)
    param_rel = _worst_rel(params, ref_params)
    print(f"{mesh_name}: worst rel err losses {loss_rel:.2e}, params {param_rel:.2e}")
    assert loss_rel <= REL, loss_rel
    assert param_rel <= REL, param_rel


def test_s8_3_per_shard_frequency_differs_from_global() -> None:
    """A per-shard log2 averaged over shards (the wrong reduction) is not the global value."""
    mesh = build_mesh(Mesh(data=4))
    key = jax.random.key(3)
    # firing rates differ by shard, as they do for real data
    ci = jax.random.uniform(key, (16, 4, 6)) * jnp.repeat(jnp.arange(1, 5), 4)[:, None, None] / 4.0
    psi = PNormPsi(1.0, None, 0.0, 1.0, 1e-12)
    a_ref = 64.0

    def global_freq(c: jax.Array) -> jax.Array:
        return frequency({"s": component_means(psi(c, jnp.zeros(())))}, a_ref)

    @partial(jax.shard_map, mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P())
    def per_shard_freq(c: jax.Array) -> jax.Array:
        local = frequency({"s": component_means(psi(c, jnp.zeros(())))}, a_ref)
        return jax.lax.pmean(local, ("data", "fsdp"))

    sharded = jax.device_put(ci, PlacementPlan(mesh).batch(3))
    correct = float(jax.jit(global_freq)(sharded))
    np.testing.assert_allclose(correct, float(global_freq(ci)), rtol=1e-6)
    wrong = float(jax.jit(per_shard_freq)(sharded))
    assert abs(wrong - correct) > 1e-3 * abs(correct), (wrong, correct)
