"""Shared by the mesh-invariance test and the multi-process worker: one toy and one LM problem."""

import jax
import optax
from flax import nnx

from param_decomp.config.schema import Decomposition, LlamaModel, Mesh, SparseFeatureData, TMSModel
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import FrequencyBlock, ImportanceMinimality
from param_decomp.losses.lm_terms import MaskedCrossEntropy
from param_decomp.losses.reconstruction import (
    StochasticRecon,
    StochasticReconLayerwise,
    StochasticReconSubset,
)
from param_decomp.objective import Objective
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.llama import Llama
from param_decomp.targets.tms import TMS
from param_decomp.train.step import CompiledStep, place_and_jit

MESHES = {
    "single": (Mesh(data=1), 1),
    "data4": (Mesh(data=4), 4),
    "data2_tensor2": (Mesh(data=2, tensor=2), 4),
    "fsdp4": (Mesh(data=1, fsdp=4, shard_target_weights=True), 4),
}
N_STEPS = 5
REL = 1e-5


def toy_problem() -> tuple:
    target = TMS(
        TMSModel(type="tms", n_features=8, n_hidden=4, n_hidden_layers=1), rngs=nnx.Rngs(0)
    )
    shapes = {k: tuple(v.shape) for k, v in target.site_weights().items()}
    cfg = Decomposition(
        C=8, sites=list(shapes), ci_function={"type": "per_component_mlp", "hidden": [8]}
    )
    data = SparseFeatureData(feature_probability=0.2)
    batches = [sample_sparse_features(jax.random.key(100 + i), 16, 8, data) for i in range(N_STEPS)]
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(
            coeff=1e-2,
            pnorm=1.0,
            p_anneal_final_p=0.5,
            frequency=FrequencyBlock(coeff=1e-3, reference_token_count=512),
        ),
        StochasticRecon(coeff=1.0),
        StochasticReconLayerwise(coeff=1.0),
        StochasticReconSubset(coeff=1.0, source="binomial"),
    )
    return target, cfg, shapes, batches, terms


def lm_problem() -> tuple:
    target = Llama(
        LlamaModel(type="llama", vocab_size=16, d_model=8, n_heads=2, d_mlp=16), rngs=nnx.Rngs(0)
    )
    sites = ["layers.0.mlp.up", "layers.0.mlp.down", "layers.0.attn.q"]
    shapes = {k: tuple(v.shape) for k, v in target.site_weights().items() if k in sites}
    cfg = Decomposition(C=8, sites=sites, ci_function={"type": "global_mlp", "hidden": [8]})
    batches = [jax.random.randint(jax.random.key(200 + i), (8, 6), 0, 16) for i in range(N_STEPS)]
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(
            coeff=1e-2, pnorm=2.0, frequency=FrequencyBlock(coeff=1e-3, reference_token_count=256)
        ),
        StochasticRecon(coeff=1.0, distance="kl"),
        StochasticReconLayerwise(coeff=1.0, distance="kl"),
        MaskedCrossEntropy(coeff=0.5, routing="ci", delta_component=False),
    )
    return target, cfg, shapes, batches, terms


def build_run(problem: tuple, mesh_cfg: Mesh, devices: list) -> tuple[CompiledStep, list]:
    """Place the problem on a mesh over `devices` and jit its step."""
    target, cfg, shapes, batches, terms = problem
    mesh = build_mesh(mesh_cfg, devices)
    plan = PlacementPlan(mesh, mesh_cfg.shard_target_weights)
    model = DecompositionModel(cfg, shapes, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    objective = Objective.from_terms(terms)
    compiled = place_and_jit(
        objective,
        graphdef,
        target_graphdef,
        params,
        target_state,
        optax.adamw(1e-2),
        N_STEPS,
        plan,
        batches[0].ndim,
        jax.random.key(7),
    )
    return compiled, batches
