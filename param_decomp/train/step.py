"""The jitted decomposition step: one fused objective pass, one AdamW update (SPEC §Step).

`train_step(state, target_state, batch) -> (state, metrics)`: the decomposition's graph and the
objective are static structure; every array (components, CI params, optimizer moments, the
frozen target weights, the batch) is an argument, so nothing large is baked in as a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding
from jaxtyping import Array

from param_decomp.config.schema import ComputeDtype
from param_decomp.decomposition.adversary import adversary_update, init_adversary_state
from param_decomp.losses.density_target import init_multipliers, update_multipliers
from param_decomp.objective import Objective
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.train.micro_batches import (
    GlobalMeans,
    accumulated_grads,
    global_component_means,
    pin_to_global,
    split_micro_batches,
)


@struct.dataclass
class DecompState:
    """Everything that changes during a decomposition run."""

    params: nnx.State
    opt_state: Any
    step: Array
    key: Array
    first_nonfinite_step: Array  # -1 until a loss term turns NaN/inf (S11.1)
    # S6A.6: the persistent adversary's {sources, opt_state}; None without a persistent term
    adversary: Any = None
    # S7A: per-site Lagrange multipliers of a density target; None without one
    multipliers: Any = None


StepFn = Callable[[DecompState, nnx.State, Array], tuple[DecompState, dict[str, Array]]]


def init_state(
    params: nnx.State,
    optimizer: optax.GradientTransformation,
    key: Array,
    adversary: dict[str, Any] | None = None,
    multipliers: dict[str, Array] | None = None,
) -> DecompState:
    return DecompState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=key,
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
        adversary=adversary,
        multipliers=multipliers,
    )


def objective_loss(
    objective: Objective,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    params: nnx.State,
    target_state: nnx.State,
    batch: Array,
    key: Array,
    progress: Array,
    compute_dtype: ComputeDtype = "float32",
    global_means: GlobalMeans | None = None,
    multipliers: dict[str, Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Total loss and metrics for one batch; the function the step differentiates (so a bf16
    compute dtype casts in here and the gradients reach the float32 masters, S15.6).
    `global_means`: a micro-batch's pass reads the global batch's component means (S10.4);
    `multipliers`: a density target's per-site multipliers (S7A)."""
    total, (metrics, _) = objective_loss_and_sources(
        objective,
        graphdef,
        target_graphdef,
        params,
        target_state,
        batch,
        key,
        progress,
        compute_dtype=compute_dtype,
        global_means=global_means,
        multipliers=multipliers,
    )
    return total, metrics


def objective_loss_and_sources(
    objective: Objective,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    params: nnx.State,
    target_state: nnx.State,
    batch: Array,
    key: Array,
    progress: Array,
    adversary_sources: dict[str, Array] | None = None,
    compute_dtype: ComputeDtype = "float32",
    global_means: GlobalMeans | None = None,
    multipliers: dict[str, Array] | None = None,
) -> tuple[Array, tuple[dict[str, Array], dict[str, Array] | None]]:
    """`objective_loss` given the persistent adversary's sources; the aux also returns its
    warmed-up sources (S6A.5), None without a persistent term."""
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    sources = objective.draw_sources(key, target.batch_shape(batch), model.site_names, model.site_C)
    ctx = objective.context(
        target, model, batch, sources, progress, adversary_sources, compute_dtype
    )
    if global_means is not None:
        ctx.component_means = pin_to_global(objective, ctx.component_means, global_means)
    ctx.multipliers = multipliers
    total, metrics = objective.evaluate(ctx)
    spec = objective.persistent
    return total, (metrics, ctx.adversary_sources[spec] if spec is not None else None)


def make_train_step(
    objective: Objective,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    total_steps: int,
    compute_dtype: ComputeDtype = "float32",
    micro_batches: int = 1,
) -> StepFn:
    """Build the (unjitted) step; the caller jits it with the placement plan's shardings.
    `compute_dtype` is the target and masked forwards' (S15.6); `micro_batches` > 1 accumulates
    the gradient over that many micro-batches of the batch, one update (S10.4)."""
    if micro_batches > 1 and objective.adversaries:
        raise ValueError(
            f"micro_batches {micro_batches} with an adversarial term: its ascent would see one "
            "micro-batch, not the batch (S10.4)"
        )

    def batch_grads(
        params: nnx.State,
        target_state: nnx.State,
        batch: Array,
        key: Array,
        progress: Array,
        global_means: GlobalMeans | None = None,
        multipliers: dict[str, Array] | None = None,
    ) -> tuple[Any, dict[str, Array]]:
        """The gradient and metrics of the objective on one batch (or micro-batch, reading the
        global component means, S10.4)."""
        return jax.grad(
            lambda p: objective_loss(
                objective,
                graphdef,
                target_graphdef,
                p,
                target_state,
                batch,
                key,
                progress,
                compute_dtype,
                global_means,
                multipliers,
            ),
            has_aux=True,
        )(params)

    def micro_batched_grads(
        state: DecompState, target_state: nnx.State, batch: Array, key: Array, progress: Array
    ) -> tuple[Any, dict[str, Array]]:
        """S10.4: the global component means first, then the mean gradient over the
        micro-batches."""
        micro = split_micro_batches(batch, micro_batches)
        global_means = global_component_means(
            objective,
            graphdef,
            target_graphdef,
            state.params,
            target_state,
            micro,
            progress,
            compute_dtype,
        )

        def micro_grad(
            p: nnx.State, x: Array, micro_key: Array, f: GlobalMeans | None
        ) -> tuple[Any, dict[str, Array]]:
            return batch_grads(p, target_state, x, micro_key, progress, f, state.multipliers)

        return accumulated_grads(micro_grad, state.params, micro, key, global_means)

    def train_step(
        state: DecompState, target_state: nnx.State, batch: Array
    ) -> tuple[DecompState, dict[str, Array]]:
        key = jax.random.fold_in(state.key, state.step)
        progress = state.step.astype(jnp.float32) / total_steps
        spec = objective.persistent
        if micro_batches > 1:
            grads, metrics = micro_batched_grads(state, target_state, batch, key, progress)
            adversary = state.adversary
        elif spec is None:
            grads, metrics = batch_grads(
                state.params, target_state, batch, key, progress, multipliers=state.multipliers
            )
            adversary = state.adversary
        else:
            # S6A.5: ONE backward gives the params' gradient and the sources' (for the ascent)
            grad_fn = jax.grad(
                lambda p, s: objective_loss_and_sources(
                    objective,
                    graphdef,
                    target_graphdef,
                    p,
                    target_state,
                    batch,
                    key,
                    progress,
                    s,
                    compute_dtype,
                    multipliers=state.multipliers,
                ),
                argnums=(0, 1),
                has_aux=True,
            )
            (grads, source_grads), (metrics, warmed) = grad_fn(
                state.params, state.adversary["sources"]
            )
            adversary = adversary_update(spec, state.adversary, warmed, source_grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
        first_bad = jnp.where(
            (state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step
        )
        metrics = dict(metrics)
        metrics["train/grad_norm"] = optax.tree.norm(grads)
        multipliers = state.multipliers
        if objective.density_target is not None:  # S7A.2: the dual step, after the primal's
            multipliers = update_multipliers(multipliers, metrics, objective.density_target)
        new_state = DecompState(
            params, opt_state, state.step + 1, state.key, first_bad, adversary, multipliers
        )
        return new_state, metrics

    return train_step


def make_faithfulness_warmup(
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    lr: float,
    weight_decay: float,
    steps: int,
) -> Callable[[nnx.State, nnx.State], tuple[nnx.State, Array]]:
    """`steps` AdamW steps on faithfulness alone, over V/U only, in one jitted fori_loop (S4.2)."""
    from param_decomp.losses.faithfulness import faithfulness_loss

    optimizer = optax.adamw(lr, weight_decay=weight_decay)

    def run(params: nnx.State, target_state: nnx.State) -> tuple[nnx.State, Array]:
        target = nnx.merge(target_graphdef, target_state)
        weights = target.site_weights()
        comp_filter = lambda path, _: "components" in [str(p) for p in path]  # noqa: E731
        comps, rest = nnx.split_state(params, comp_filter, ...)

        def loss(c: nnx.State) -> Array:
            model = nnx.merge(graphdef, nnx.merge_state(c, rest))
            VU = model.all_VU()
            return faithfulness_loss({s: weights[s] for s in VU}, VU)

        def body(_: int, carry: tuple[nnx.State, Any]) -> tuple[nnx.State, Any]:
            c, opt = carry
            grads = jax.grad(loss)(c)
            updates, opt = optimizer.update(grads, opt, c)
            return optax.apply_updates(c, updates), opt

        comps, _ = jax.lax.fori_loop(0, steps, body, (comps, optimizer.init(comps)))
        return nnx.merge_state(comps, rest), loss(comps)

    return run


def moment_shardings(opt_state: Any, param_shardings: Any, plan: PlacementPlan) -> Any:
    """Optimizer moments shaped like the params are sharded like them (S13.2), or also over
    the batch axes with `plan.shard_moments` (S13.6); the rest (counts, schedule state) is
    replicated."""
    params_def = jax.tree.structure(param_shardings)

    def is_param_like(node: Any) -> bool:
        try:
            return jax.tree.structure(node) == params_def
        except Exception:  # noqa: BLE001 - any non-pytree node is simply not param-like
            return False

    def place(node: Any) -> Any:
        if not is_param_like(node):
            return plan.replicated()
        return jax.tree.map(
            lambda s, leaf: plan.moment_sharding(s, tuple(leaf.shape)), param_shardings, node
        )

    return jax.tree.map(place, opt_state, is_leaf=is_param_like)


def make_init(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    key: Array,
    sites: tuple[str, ...],
    site_C: Any,
) -> Callable[[nnx.State], DecompState]:
    """The initial train state of given params: optimizer state, step, key, adversary (S6A.6)."""

    def init(p: nnx.State) -> DecompState:
        multipliers = init_multipliers(sites) if objective.density_target is not None else None
        return init_state(
            p,
            optimizer,
            key,
            init_adversary_state(objective.persistent, key, sites, site_C),
            multipliers,
        )

    return init


def decomp_state_shardings(
    abstract: DecompState, param_shardings: Any, plan: PlacementPlan
) -> DecompState:
    """Where every leaf of the train state lives (S13.2): params per the plan, moments like
    their params, scalars and the persistent adversary replicated. `abstract` may hold
    ShapeDtypeStructs (the planner, S13.5) or arrays."""
    return DecompState(
        params=param_shardings,
        opt_state=moment_shardings(abstract.opt_state, param_shardings, plan),
        step=plan.replicated(),
        key=plan.replicated(),
        first_nonfinite_step=plan.replicated(),
        # S6A.6: batch-shared sources (width C + 1) and their moments are small: replicated
        adversary=jax.tree.map(lambda _: plan.replicated(), abstract.adversary),
        multipliers=jax.tree.map(lambda _: plan.replicated(), abstract.multipliers),
    )


def jit_train_step(
    train_step: StepFn,
    state_shardings: DecompState,
    target_shardings: Any,
    batch_sharding: NamedSharding,
    plan: PlacementPlan,
) -> StepFn:
    """The step jitted with the run's shardings; the state is donated (updated in place)."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, target_shardings, batch_sharding),
        out_shardings=(state_shardings, plan.replicated()),
        donate_argnums=(0,),
    )


@dataclass
class CompiledStep:
    """A placed initial state and the step jitted with the placement plan's shardings."""

    state: DecompState
    target_state: nnx.State
    train_step: StepFn
    batch_sharding: NamedSharding


def _placed(leaf: Any, sharding: NamedSharding) -> Array:
    """`leaf` on `sharding`: kept as is when it is already laid out so (an hf target read
    straight into its shardings, S17.5), else placed from a host copy, identical on every
    process."""
    if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
        return leaf
    return jax.device_put(np.asarray(leaf), sharding)


def place_and_jit(
    objective: Objective,
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    params: nnx.State,
    target_state: nnx.State,
    optimizer: optax.GradientTransformation,
    total_steps: int,
    plan: PlacementPlan,
    batch_ndim: int,
    key: Array,
    warmup: Callable[[nnx.State, nnx.State], tuple[nnx.State, Array]] | None = None,
    compute_dtype: ComputeDtype = "float32",
    micro_batches: int = 1,
) -> CompiledStep:
    """Shard params/target per the plan (S13.2), warm up, init the optimizer, jit the step."""
    param_shardings = plan.decomposition_shardings(params)
    target_shardings = plan.target_shardings(target_state)
    # from host copies: identical on every process, so this also places multi-process arrays
    params = jax.device_put(jax.tree.map(np.asarray, params), param_shardings)
    target_state = jax.tree.map(_placed, target_state, target_shardings)
    if warmup is not None:
        warm = jax.jit(warmup, out_shardings=(param_shardings, plan.replicated()))
        params, _ = warm(params, target_state)
    model = nnx.merge(graphdef, params)
    init = make_init(objective, optimizer, key, tuple(model.site_names), model.site_C)
    state_shardings = decomp_state_shardings(jax.eval_shape(init, params), param_shardings, plan)
    state = jax.jit(init, out_shardings=state_shardings)(params)
    batch_sharding = plan.batch(batch_ndim)
    train_step = jit_train_step(
        make_train_step(
            objective,
            graphdef,
            target_graphdef,
            optimizer,
            total_steps,
            compute_dtype,
            micro_batches,
        ),
        state_shardings,
        target_shardings,
        batch_sharding,
        plan,
    )
    return CompiledStep(state, target_state, train_step, batch_sharding)
