"""The complete decomposition train step of a config, from shapes alone, compiled ahead of time
on a real mesh of (simulated) devices (SPEC S13.5).

Nothing model-sized is allocated: the target and the decomposition are traced by
`nnx.eval_shape`, the optimizer state and the persistent adversary by `jax.eval_shape` of the
run's own init (`make_init`), and every argument of the step is a `jax.ShapeDtypeStruct`
carrying the `NamedSharding` the run gives it (`decomp_state_shardings`, `target_shardings`,
`plan.batch`), so the compiled executable is the one `place_and_jit` would build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from param_decomp.config.schema import DecomposeConfig
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sites import resolve_sites
from param_decomp.objective import Objective
from param_decomp.plan.memory_fit import TargetSpec, _lm_fields, abstract_target_parts
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.token_lm import INDEX_SITES
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.step import (
    DecompState,
    decomp_state_shardings,
    jit_train_step,
    make_init,
    make_train_step,
)


@dataclass
class AbstractStep:
    """The step's abstract arguments (each leaf a sharded ShapeDtypeStruct) and its jitted fn."""

    plan: PlacementPlan
    state: DecompState
    target_state: Any
    batch: jax.ShapeDtypeStruct
    train_step: Any
    objective: Objective
    site_shapes: dict[str, tuple[int, int]]  # the decomposed sites' (d_in, d_out)
    site_C: dict[str, int]
    all_site_shapes: dict[str, tuple[int, int]]  # every linear matrix of the target
    lm: tuple[int, int, int] | None  # (tokens per row, vocab, heads) of an LM target

    def lower(self) -> Any:
        return self.train_step.lower(self.state, self.target_state, self.batch)


def _with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves, each carrying its sharding."""
    return jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), tree, shardings
    )


def abstract_batch(
    cfg: DecomposeConfig, target_cfg: TargetSpec, target: Any, sharding: NamedSharding
) -> jax.ShapeDtypeStruct:
    """One training batch's shape: token windows (batch, seq_len) int32 for an LM, feature
    vectors (batch, n_features) float32 for a toy target (what the run's sources yield)."""
    lm = _lm_fields(target_cfg)
    if lm is not None:
        return jax.ShapeDtypeStruct((cfg.train.batch_size, lm[0]), jnp.int32, sharding=sharding)
    shape = (cfg.train.batch_size, int(target.n_features))
    return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)


def build_abstract_step(cfg: DecomposeConfig, target_cfg: TargetSpec) -> AbstractStep:
    """The run's jitted step and its sharded abstract arguments on `build_mesh(cfg.mesh)` over
    every visible device (the caller checks the mesh first, `check_mesh`)."""
    plan = PlacementPlan.for_config(build_mesh(cfg.mesh), cfg.mesh)
    target_graphdef, target_state = abstract_target_parts(target_cfg)
    target = nnx.merge(target_graphdef, target_state)
    weights = jax.eval_shape(lambda s: nnx.merge(target_graphdef, s).site_weights(), target_state)
    all_shapes = {s: (int(w.shape[0]), int(w.shape[1])) for s, w in weights.items()}
    site_C = resolve_sites(cfg.decomposition, list(all_shapes))
    lm = _lm_fields(target_cfg)
    index_sites = INDEX_SITES if lm else ()
    model = nnx.eval_shape(
        lambda: DecompositionModel(
            cfg.decomposition, all_shapes, rngs=nnx.Rngs(params=cfg.seed), index_sites=index_sites
        )
    )
    graphdef, params = nnx.split(model)
    objective = Objective.from_terms(cfg.losses, cfg.train.remat)
    optimizer = make_optimizer(cfg.train.optimizer, cfg.train.steps)
    init = make_init(
        objective, optimizer, jax.random.key(cfg.seed), tuple(model.site_names), model.site_C
    )
    param_shardings = plan.decomposition_shardings(params)
    abstract_state = jax.eval_shape(init, params)
    state_shardings = decomp_state_shardings(abstract_state, param_shardings, plan)
    target_shardings = plan.target_shardings(target_state)
    batch_sharding = plan.batch(2)
    step = jit_train_step(
        make_train_step(
            objective,
            graphdef,
            target_graphdef,
            optimizer,
            cfg.train.steps,
            cfg.train.compute_dtype,  # a bf16 run is planned as it runs (S15.6)
            cfg.train.micro_batches,  # and a micro-batched one (S10.4)
        ),
        state_shardings,
        target_shardings,
        batch_sharding,
        plan,
    )
    return AbstractStep(
        plan=plan,
        state=_with_shardings(abstract_state, state_shardings),
        target_state=_with_shardings(target_state, target_shardings),
        batch=abstract_batch(cfg, target_cfg, target, batch_sharding),
        train_step=step,
        objective=objective,
        site_shapes={s: all_shapes[s] for s in site_C},
        site_C=dict(site_C),
        all_site_shapes=all_shapes,
        lm=lm,
    )
