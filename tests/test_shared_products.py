"""S9.4: every mask-independent product is computed once per step, and the masked forwards that
reuse them equal the from-scratch forwards of S2.2 / S6."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from param_decomp.config.schema import Decomposition, ResidMLPModel, TMSModel
from param_decomp.decomposition.components import masked_product_sum, stochastic_mask
from param_decomp.decomposition.masked_forward import clean_forward
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sources import ReconPlan, draw_plan_sources, live_sites
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import ImportanceMinimality
from param_decomp.losses.reconstruction import (
    StochasticRecon,
    StochasticReconLayerwise,
)
from param_decomp.objective import Objective
from param_decomp.targets.resid_mlp import ResidMLP
from param_decomp.targets.tms import TMS
from param_decomp.train.step import init_state, make_train_step

# Sizes chosen so that no two of (batch, d_embed, d_mlp, C, n_features) coincide: a dot_general
# is then identified as "x @ V of site s" by its operand shapes alone.
B, N_FEATURES, D_EMBED, D_MLP, C = 8, 7, 12, 5, 9


def _resid(n_layers: int = 1) -> ResidMLP:
    cfg = ResidMLPModel(
        type="resid_mlp", n_features=N_FEATURES, d_embed=D_EMBED, d_mlp=D_MLP, n_layers=n_layers
    )
    return ResidMLP(cfg, rngs=nnx.Rngs(0))


def _decomposition(target: object, sites: list[str], **kw: object) -> DecompositionModel:
    weights = target.site_weights()
    cfg = Decomposition(C=C, sites=sites, **kw)
    return DecompositionModel(cfg, {s: tuple(weights[s].shape) for s in sites}, rngs=nnx.Rngs(1))


def _xv_products(jaxpr: jax.extend.core.Jaxpr, site_shapes: dict[str, tuple[int, int]]) -> dict:
    """Count dot_generals of the form (B, d_in) @ (d_in, C) -> (B, C), per site d_in, recursing
    into sub-jaxprs (the backward's products have other operand shapes)."""
    counts: dict[int, int] = {}
    d_ins = {d_in for d_in, _ in site_shapes.values()}

    def visit(jx: jax.extend.core.Jaxpr) -> None:
        for eqn in jx.eqns:
            if eqn.primitive.name == "dot_general":
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                if (
                    not lb
                    and len(lhs) == 2
                    and len(rhs) == 2
                    and lhs[0] == B
                    and tuple(lc) == (1,)
                    and tuple(rc) == (0,)
                    and rhs[1] == C
                    and rhs[0] in d_ins
                ):
                    counts[rhs[0]] = counts.get(rhs[0], 0) + 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, list | tuple) else (value,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        visit(sub)

    visit(jaxpr)
    return counts


def _step_jaxpr(target: object, model: DecompositionModel, terms: tuple, x: jax.Array):
    objective = Objective.from_terms(terms)
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    optimizer = optax.adamw(1e-3)
    step = make_train_step(objective, graphdef, target_graphdef, optimizer, total_steps=10)
    state = init_state(params, optimizer, jax.random.key(0))
    return jax.make_jaxpr(step)(state, target_state, x).jaxpr


@pytest.mark.parametrize("n_samples", [1, 2])
def test_s9_4_one_xV_per_distinct_site_input_resid_mlp(n_samples: int) -> None:
    """ResidMLP-1 with the paper's terms: x @ V of mlp_in once (its input is always the clean
    one), of mlp_out once on the clean input (CI and the layerwise forward share it) and once
    per all-sites sample on that sample's masked input. Before S9.4 it was 2 + 2 per sample."""
    target = _resid()
    sites = ["layers.0.mlp_in", "layers.0.mlp_out"]
    model = _decomposition(target, sites, ci_function={"type": "per_component_mlp"})
    terms = (
        Faithfulness(coeff=1.0),
        ImportanceMinimality(coeff=1e-3, pnorm=2.0),
        StochasticRecon(coeff=1.0, n_mask_samples=n_samples),
        StochasticReconLayerwise(coeff=1.0, n_mask_samples=n_samples),
    )
    x = jnp.ones((B, N_FEATURES))
    counts = _xv_products(
        _step_jaxpr(target, model, terms, x), {"in": (D_EMBED, C), "out": (D_MLP, C)}
    )
    assert counts == {D_EMBED: 1, D_MLP: 1 + n_samples}, counts


def test_s9_4_one_xV_per_distinct_site_input_tied_tms() -> None:
    """TMS with tied sites: linear1 on the clean input once; linear2 (V = U1^T) on the clean
    hidden once and on the all-sites forward's masked hidden once."""
    target = TMS(TMSModel(type="tms", n_features=N_FEATURES, n_hidden=3), rngs=nnx.Rngs(0))
    model = _decomposition(target, ["linear1", "linear2"], tied_sites={"linear2": "linear1"})
    terms = (StochasticRecon(coeff=1.0), StochasticReconLayerwise(coeff=1.0))
    x = jnp.ones((B, N_FEATURES))
    shapes = {"linear1": (N_FEATURES, C), "linear2": (3, C)}
    counts = _xv_products(_step_jaxpr(target, model, terms, x), shapes)
    # linear2's V is U1 transposed: the product is h @ U1^T, the same shapes as h @ V
    assert counts == {N_FEATURES: 1, 3: 2}, counts


def _naive_forward(target, plan, fwd, i, VU, ci_lower, x):  # noqa: ANN001, ANN202
    """S2.2 / S2.3 evaluated literally: every product recomputed, W - V U formed."""
    sites = tuple(VU)
    live = live_sites(plan, sites, i)

    def site_fn(name: str, h: jax.Array, W: jax.Array) -> jax.Array:
        if name not in live:
            return h @ W
        V, U = VU[name]
        mask = stochastic_mask(ci_lower[name], fwd["mask_source"][name])
        out = ((h @ V) * mask) @ U
        if plan.delta:
            out = out + fwd["delta_source"][name][..., None] * (h @ (W - V @ U))
        if fwd["routed"] is not None:
            out = jnp.where(fwd["routed"][name][..., None], out, h @ W)
        return out

    return target(x, site_fn)


@pytest.mark.parametrize("routing", ["all", "each", "subset", "ci"])
@pytest.mark.parametrize("delta", [True, False])
def test_s9_4_shared_products_equal_literal_forwards(routing: str, delta: bool) -> None:
    """Two-layer ResidMLP, sites in both layers: every masked forward built from the recorded
    clean products equals the literal S2.2 forward, in values and V/U gradients (float64)."""
    if routing == "ci" and delta:
        pytest.skip("the ci plan has no delta channel")
    with jax.enable_x64(True):
        target = nnx.merge(*_split64(_resid(n_layers=2)))
        sites = ("layers.0.mlp_in", "layers.0.mlp_out", "layers.1.mlp_in", "layers.1.mlp_out")
        model = nnx.merge(*_split64(_decomposition(target, list(sites))))
        plan = ReconPlan(routing, "continuous", 1 if routing == "ci" else 2, delta)
        objective = Objective((), (), (plan,))
        x = jax.random.uniform(jax.random.key(3), (B, N_FEATURES), jnp.float64)
        drawn = draw_plan_sources(plan, jax.random.key(4), (B,), sites, C)
        sources = {plan: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), drawn)}
        ctx = objective.context(target, model, x, sources, jnp.zeros(()))
        record = clean_forward(target, x, sites)[1]

        def shared(vu: dict) -> list:
            c = objective.context_from_ci(
                target, x, ctx.clean_output, record, ctx.weights, vu,
                ctx.ci_lower, ctx.ci_upper, sources, jnp.zeros(()),
            )  # fmt: skip
            return [o for sample in c.recon_outputs[plan] for o in sample]

        def literal(vu: dict) -> list:
            return [
                _naive_forward(target, plan, fwd, i, vu, ctx.ci_lower, x)
                for sample in sources[plan]
                for i, fwd in enumerate(sample)
            ]

        VU = model.all_VU()
        got = [o for sample in ctx.recon_outputs[plan] for o in sample]
        for g, w in zip(got, literal(VU), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)

        def sq(outs: list) -> jax.Array:
            return sum(jnp.sum(jnp.sin(o)) for o in outs)

        g_shared = jax.grad(lambda vu: sq(shared(vu)))(VU)
        g_literal = jax.grad(lambda vu: sq(literal(vu)))(VU)
        # same tree, shapes and dtypes (float64 throughout), and close values
        chex.assert_trees_all_equal_shapes_and_dtypes(g_shared, g_literal)
        chex.assert_trees_all_close(g_shared, g_literal, rtol=1e-9, atol=1e-11)


def _split64(module: nnx.Module) -> tuple:
    graphdef, state = nnx.split(module)
    return graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)


def test_s2_2_delta_form_equals_subtracted_weight() -> None:
    """((xV) * (m - d)) U + d xW == ((xV) * m) U + d x (W - V U), values and V/U gradients."""
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.key(0), 6)
        x = jax.random.normal(k[0], (B, D_EMBED), jnp.float64)
        V = jax.random.normal(k[1], (D_EMBED, C), jnp.float64)
        U = jax.random.normal(k[2], (C, D_MLP), jnp.float64)
        W = jax.random.normal(k[3], (D_EMBED, D_MLP), jnp.float64)
        m = jax.random.uniform(k[4], (B, C), jnp.float64)
        d = jax.random.uniform(k[5], (B,), jnp.float64)

        def shared(V: jax.Array, U: jax.Array) -> jax.Array:
            return masked_product_sum(x @ V, U, m, x @ W, d)

        def literal(V: jax.Array, U: jax.Array) -> jax.Array:
            return ((x @ V) * m) @ U + d[:, None] * (x @ (W - V @ U))

        np.testing.assert_allclose(shared(V, U), literal(V, U), rtol=1e-12, atol=1e-12)
        gs = jax.grad(lambda v, u: jnp.sum(jnp.sin(shared(v, u))), argnums=(0, 1))(V, U)
        gl = jax.grad(lambda v, u: jnp.sum(jnp.sin(literal(v, u))), argnums=(0, 1))(V, U)
        for a, b in zip(gs, gl, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_s2_3_routing_folded_into_coefficients() -> None:
    """Unrouted positions give x W exactly; routed ones the masked product (with and without
    the delta channel)."""
    k = jax.random.split(jax.random.key(1), 5)
    acts = jax.random.normal(k[0], (B, C))
    U = jax.random.normal(k[1], (C, D_MLP))
    xw = jax.random.normal(k[2], (B, D_MLP))
    m = jax.random.uniform(k[3], (B, C))
    d = jax.random.uniform(k[4], (B,))
    routed = jnp.arange(B) % 3 == 0
    for delta in (d, None):
        out = masked_product_sum(acts, U, m, xw, delta, routed)
        on = masked_product_sum(acts, U, m, xw, delta)
        np.testing.assert_allclose(out[~routed], xw[~routed], rtol=1e-6)
        np.testing.assert_allclose(out[routed], on[routed], rtol=1e-6)


def test_s6_3_subset_routing_draws_uniform_k() -> None:
    """k ~ U{1..n} per position and exactly k sites routed."""
    sites = ("a", "b", "c", "d")
    plan = ReconPlan("subset")
    ((fwd,),) = draw_plan_sources(plan, jax.random.key(0), (20000,), sites, 3)
    routed = np.stack([np.asarray(fwd["routed"][s]) for s in sites], axis=-1)
    k = routed.sum(-1)
    assert k.min() == 1 and k.max() == len(sites)
    freq = np.bincount(k, minlength=5)[1:] / k.size
    np.testing.assert_allclose(freq, 0.25, atol=0.02)
    # every site equally likely to be live
    np.testing.assert_allclose(routed.mean(0), routed.mean(), atol=0.02)
