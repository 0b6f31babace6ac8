"""The memory levers of a decomposition run (issue 12): bf16 AdamW moments (S10.5), moments
split over the batch axes ZeRO-style (S13.6) and rematerialised masked forwards and
faithfulness (S15.9). Each must change where or how the state is held, never what is computed
beyond the stated rounding.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tiny_llama import tiny_llama_problem

from param_decomp.config.schema import Optimizer
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import FrequencyBlock, ImportanceMinimality
from param_decomp.losses.reconstruction import StochasticRecon
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.train.optimizer import make_optimizer, scale_by_adam_narrow_moments
from param_decomp.train.step import (
    decomp_state_shardings,
    init_state,
    jit_train_step,
    make_train_step,
    objective_loss,
)

pytestmark = pytest.mark.runs_long(seconds=30)

SITES = ("layers.0.attn.q", "layers.0.mlp.up", "layers.0.mlp.down")


def _rel(x: Any, y: Any) -> float:
    """Normwise relative difference over a pytree (S13.3)."""
    diffs = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)), x, y
    )
    return max(jax.tree.leaves(diffs))


def _problem(remat: tuple[str, ...] = ()) -> tuple[Any, ...]:
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(
            coeff=1e-3, pnorm=2.0, frequency=FrequencyBlock(coeff=1e-4, reference_token_count=64)
        ),
        StochasticRecon(coeff=1.0, distance="kl"),
    )
    return tiny_llama_problem(SITES, terms, batch=8, remat=remat)


# ----------------------------------------------------------------------------- S10.5


def test_s10_5_narrow_adam_in_float32_is_optax_adamw() -> None:
    """S10.5: the narrow-moment transform stored in float32 is AdamW exactly (same direction,
    same decoupled decay), so bf16 differs from fp32 only by the moments' rounding."""
    params = {"a": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones((5,))}
    ours = optax.chain(
        scale_by_adam_narrow_moments(0.9, 0.99, 1e-8, jnp.float32),
        optax.add_decayed_weights(0.01),
        optax.scale_by_learning_rate(1e-2),
    )
    ref = optax.adamw(1e-2, b1=0.9, b2=0.99, weight_decay=0.01)
    p1, p2, s1, s2 = params, params, ours.init(params), ref.init(params)
    for i in range(4):
        g = jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)) + 0.1 * i, p1)
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = ref.update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    assert _rel(p1, p2) < 1e-6


def test_s10_5_bf16_moments_halve_the_state_and_track_float32() -> None:
    """S10.5: `moment_dtype: bfloat16` stores both moments in bf16 (half the bytes) and the
    update stays within bf16 rounding of the float32 one."""
    params = {"w": jax.random.normal(jax.random.key(0), (32, 16))}
    narrow = make_optimizer(Optimizer(lr=1e-2, moment_dtype="bfloat16"), 10)
    wide = make_optimizer(Optimizer(lr=1e-2), 10)
    sn, sw = narrow.init(params), wide.init(params)
    moment_bytes = lambda s: sum(  # noqa: E731
        x.nbytes for x in jax.tree.leaves(s) if x.shape == (32, 16)
    )
    assert {x.dtype for x in jax.tree.leaves(sn) if x.ndim == 2} == {jnp.dtype(jnp.bfloat16)}
    assert moment_bytes(sn) * 2 == moment_bytes(sw)
    pn = pw = params
    for i in range(5):
        g = {"w": jax.random.normal(jax.random.key(i + 1), (32, 16))}
        un, sn = narrow.update(g, sn, pn)
        uw, sw = wide.update(g, sw, pw)
        pn, pw = optax.apply_updates(pn, un), optax.apply_updates(pw, uw)
    step = jax.tree.map(lambda a, b: a - b, pw, params)
    # measured 2.6e-3 of the accumulated step; bf16 keeps 8 bits of mantissa
    assert _rel(jax.tree.map(lambda a, b: a - b, pn, params), step) < 1e-2


# ----------------------------------------------------------------------------- S13.6


def _mesh() -> Mesh:
    devices = np.array(jax.devices()[:4]).reshape(1, 2, 2)
    return Mesh(devices, ("data", "fsdp", "tensor"))


def test_s13_6_moment_specs() -> None:
    """S13.6: a moment takes the batch axes its param does not use, on the first unsharded dim
    they divide, else folded into a sharded dim; moments too small to split stay as the param."""
    mesh = _mesh()
    plan = PlacementPlan(mesh, shard_site_dims=True, shard_moments=True)
    spec = lambda *a: NamedSharding(mesh, PartitionSpec(*a))  # noqa: E731
    # U (C over tensor): d_out takes fsdp
    assert plan.moment_sharding(spec("tensor", None), (8, 6)).spec == PartitionSpec(
        "tensor", "fsdp"
    )
    # replicated CI weight: its first dim fsdp divides
    assert plan.moment_sharding(spec(), (3, 4)).spec == PartitionSpec(None, "fsdp")
    # V (d_in over fsdp, C over tensor): data has size 1, nothing to add
    assert plan.moment_sharding(spec("fsdp", "tensor"), (8, 8)).spec == PartitionSpec(
        "fsdp", "tensor"
    )
    # no dim fsdp divides: folded into the tensor-sharded one when 2 x 2 divides it
    assert plan.moment_sharding(spec("tensor"), (4,)).spec == PartitionSpec(("tensor", "fsdp"))
    assert plan.moment_sharding(spec(), (3,)).spec == PartitionSpec()
    off = PlacementPlan(mesh, shard_site_dims=True)
    assert off.moment_sharding(spec("tensor", None), (8, 6)).spec == PartitionSpec("tensor", None)


def _run(plan: PlacementPlan, steps: int = 2) -> tuple[Any, int]:
    """`steps` jitted steps placed by `plan`; the params and one device's optimizer bytes."""
    objective, graphdef, params, target_graphdef, target_state, tokens = _problem()
    optimizer = make_optimizer(Optimizer(lr=1e-2), 10)
    param_shardings = plan.decomposition_shardings(params)
    state = init_state(params, optimizer, jax.random.key(0))
    shardings = decomp_state_shardings(state, param_shardings, plan)
    state = jax.device_put(state, shardings)
    target_shardings = plan.target_shardings(target_state)
    target_state = jax.device_put(target_state, target_shardings)
    step = jit_train_step(
        make_train_step(objective, graphdef, target_graphdef, optimizer, 10),
        shardings,
        target_shardings,
        plan.batch(2),
        plan,
    )
    batch = jax.device_put(tokens, plan.batch(2))
    for _ in range(steps):
        state, _ = step(state, target_state, batch)
    device = jax.devices()[0]
    opt_bytes = sum(
        s.data.nbytes
        for leaf in jax.tree.leaves(state.opt_state)
        for s in leaf.addressable_shards
        if s.device == device
    )
    return state.params, opt_bytes


def test_s13_6_zero_moments_same_step_fewer_bytes() -> None:
    """S13.6: with the moments split over fsdp the step is the same (S13.3 tolerance) and
    device 0 holds fewer optimizer bytes."""
    mesh = _mesh()
    base, base_bytes = _run(PlacementPlan(mesh, shard_site_dims=True))
    zero, zero_bytes = _run(PlacementPlan(mesh, shard_site_dims=True, shard_moments=True))
    assert _rel(zero, base) < 1e-5
    assert zero_bytes < 0.75 * base_bytes, (zero_bytes, base_bytes)


# ----------------------------------------------------------------------------- S15.9


def _grads(remat: tuple[str, ...]) -> tuple[Any, str]:
    objective, graphdef, params, target_graphdef, target_state, tokens = _problem(remat)

    def loss(p: Any) -> Any:
        return objective_loss(
            objective,
            graphdef,
            target_graphdef,
            p,
            target_state,
            tokens,
            jax.random.key(3),
            jnp.zeros(()),
        )[0]

    return jax.jit(jax.grad(loss))(params), str(jax.make_jaxpr(jax.grad(loss))(params))


def test_s15_9_remat_same_gradients_and_recomputes() -> None:
    """S15.9: rematerialising the masked forwards and faithfulness leaves the gradient as it
    was (to float reassociation) and puts checkpoint regions in the graph, one per masked
    forward and one per site's faithfulness."""
    plain, plain_jaxpr = _grads(())
    remat, remat_jaxpr = _grads(("masked_forwards", "faithfulness"))
    assert _rel(remat, plain) < 1e-5
    region = re.compile(r"\b(checkpoint|remat2?)\[")
    assert not region.search(plain_jaxpr)
    regions = len(region.findall(remat_jaxpr))
    assert regions >= 1 + len(SITES), regions
