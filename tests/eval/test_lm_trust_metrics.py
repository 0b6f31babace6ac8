"""The fast tier's LM-trust figures (SPEC S14.9-S14.12) on the 2-layer fixture LM, each against
a direct computation that does not use the masked-forward machinery: rounded masks, the
share of the ablation gap left (`ce_unrecovered`), the layer-carry check, the pgd mask, the
worst layer subset, L0 at CI > 0 and alive by mean CI. And the carry check separating a
healthy layer from a collapsed one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from direct_forward import component_output
from flax import nnx

from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sites import site_layers
from param_decomp.decomposition.sources import ReconPlan, draw_plan_sources
from param_decomp.eval.decomposition_eval import causal_importance_on
from param_decomp.eval.fast_tier import (
    ALIVE_MEAN_CI,
    BATCH_KEYS,
    KEY_OFFSET,
    ROUND_THRESHOLDS,
    fast_tier,
    layer_subsets,
    pgd_start,
    rounded_name,
)
from param_decomp.jobs.decompose import Session, build_session, to_host
from param_decomp.runconfig.decompose import load_decompose_config

pytestmark = pytest.mark.runs_long(seconds=40)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
RTOL = 1e-4
PGD_STEPS = (0, 1)  # exact checks of the start and of one sign-ascent step


@pytest.fixture(scope="module")
def session(
    tmp_path_factory: pytest.TempPathFactory, trained_targets: Callable[..., Path]
) -> Iterator[Session]:
    """Both MLPs of the 2-layer LM after the faithfulness warm-up: CI values spread over
    [0, 1]. The delta channel is off in every term, so the zero mask is m = 0 exactly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        runs = trained_targets(tmp_path_factory.mktemp("runs"), FIXTURES / "llama_2l_target.yaml")
        cfg = load_decompose_config(FIXTURES / "llama_2l.yaml")
        losses = [
            dataclasses.replace(t, delta_component=False) if hasattr(t, "delta_component") else t
            for t in cfg.losses
        ]
        # one eval batch of 16 windows: the figures' definitions, not their averaging, are checked
        cfg = cfg.model_copy(
            update={"losses": losses, "eval": cfg.eval.model_copy(update={"n_batches": 1})}
        )
        yield build_session(cfg, "llama_2l.yaml", runs, show_progress=False)


def _host(session: Session, params: nnx.State | None = None) -> tuple[nnx.State, nnx.State]:
    params = session.state.params if params is None else params
    return jax.tree.map(jnp.asarray, to_host((params, session.target_state)))


def _ce(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()


def _kl(clean: jax.Array, masked: jax.Array) -> jax.Array:
    lp, lq = jax.nn.log_softmax(clean), jax.nn.log_softmax(masked)
    return (jnp.exp(lp) * (lp - lq)).sum(-1).mean()


def _batches(session: Session) -> list[jax.Array]:
    cfg = session.cfg
    return session.source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)


def _direct(session: Session, params: nnx.State, target_state: nnx.State) -> dict:
    """Every figure of S14.9-S14.12 computed here, batch by batch, then weighted like the tier
    (equal batch shapes: plain means); the pgd mask after each of PGD_STEPS ascent steps.
    One batch's figures are one jitted program of this direct computation (run op by op,
    its few hundred distinct ops each compiled on their own cost more than the program)."""
    cfg = session.cfg
    graphdef, target_graphdef = session.graphdef, session.target_graphdef
    sites = nnx.merge(graphdef, params).site_names
    layers = site_layers(sites)
    subsets = layer_subsets(len(layers))
    layer_sites = list(layers.values())

    @jax.jit
    def batch_row(
        params: nnx.State, target_state: nnx.State, x: jax.Array, keys: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, params)
        target = nnx.merge(target_graphdef, target_state)
        clean = target(x)
        ci = causal_importance_on(model, target, x)
        row = {"ce/target": _ce(clean, x)}
        zero = {s: jnp.zeros_like(c) for s, c in ci.items()}
        row["ce/zero"] = _ce(component_output(model, target, x, zero), x)
        row["ce/ci"] = _ce(component_output(model, target, x, ci), x)
        for t in ROUND_THRESHOLDS:
            masked = component_output(
                model, target, x, {s: (c > t).astype(c.dtype) for s, c in ci.items()}
            )
            row[f"ce/{rounded_name(t)}"] = _ce(masked, x)
            row[f"kl/{rounded_name(t)}"] = _kl(clean, masked)
        carry = {s: (c > 0.1).astype(c.dtype) for s, c in ci.items()}
        for layer, members in layers.items():
            row[f"{layer}/rounded"] = _ce(component_output(model, target, x, carry, members), x)
            row[f"{layer}/zero"] = _ce(component_output(model, target, x, zero, members), x)
        plan = ReconPlan("all", "continuous", 1, False)
        u = draw_plan_sources(plan, keys["stochastic"], x.shape, sites, model.site_C)[0][0]
        stochastic = {s: ci[s] + (1 - ci[s]) * u["mask_source"][s] for s in sites}
        for j, subset in enumerate(subsets):
            live = [s for i_layer in subset for s in layer_sites[i_layer]]
            row[f"subset/{j}"] = _ce(component_output(model, target, x, stochastic, live), x)
        sources = pgd_start(keys["pgd"], model.site_C)

        def kl_of(src: dict) -> jax.Array:
            return _kl(
                clean,
                component_output(
                    model, target, x, {s: ci[s] + (1 - ci[s]) * src[s] for s in sites}
                ),
            )

        for steps in range(max(PGD_STEPS) + 1):
            if steps in PGD_STEPS:
                pgd = {s: ci[s] + (1 - ci[s]) * sources[s] for s in sites}
                row[f"ce/pgd@{steps}"] = _ce(component_output(model, target, x, pgd), x)
                row[f"kl/pgd@{steps}"] = kl_of(sources)
            if steps < max(PGD_STEPS):
                grads = jax.grad(kl_of)(sources)
                sources = {s: jnp.clip(sources[s] + 0.1 * jnp.sign(grads[s]), 0, 1) for s in sites}
        for s in sites:
            c = ci[s].reshape(-1, model.site_C[s])
            row[f"l0_any/{s}"] = (c > 0).sum(-1).mean()
            row[f"ci_mean/{s}"] = c.mean(0)
        return row

    rows: list[dict] = []
    key = jax.random.key(cfg.seed + KEY_OFFSET)
    for i, x in enumerate(_batches(session)):
        keys = dict(zip(BATCH_KEYS, jax.random.split(jax.random.fold_in(key, i), 4), strict=True))
        row = jax.tree.map(np.asarray, batch_row(params, target_state, x, keys))
        rows.append({k: v if k.startswith("ci_mean/") else float(v) for k, v in row.items()})
    return {k: np.mean([r[k] for r in rows], axis=0) for k in rows[0]} | {
        "layers": list(layers),
        "subsets": subsets,
    }


def _tier(session: Session, params: nnx.State, target_state: nnx.State, pgd_steps: int) -> dict:
    """The fast tier of `params` on the session's eval batches with `eval.pgd_steps` set."""
    cfg = session.cfg.model_copy(
        update={"eval": session.cfg.eval.model_copy(update={"pgd_steps": pgd_steps})}
    )
    return fast_tier(
        cfg, session.graphdef, params, session.target_graphdef, target_state, _batches(session)
    )


def _gap(value: float, reference: float, ablated: float) -> float:
    return (value - reference) / (ablated - reference)


def test_s14_9_to_s14_12_match_a_direct_computation(session: Session) -> None:
    params, target_state = _host(session)
    want = _direct(session, params, target_state)
    by_steps = {steps: _tier(session, params, target_state, steps) for steps in PGD_STEPS}
    for steps, got in by_steps.items():  # S14.10: the pgd mask at its start and after a step
        for metric in ("ce", "kl"):
            key = f"{metric}/pgd"
            expected = want[f"{key}@{steps}"]
            np.testing.assert_allclose(got[f"eval/{key}"], expected, rtol=RTOL, err_msg=key)
        expected = _gap(want[f"ce/pgd@{steps}"], want["ce/target"], want["ce/zero"])
        np.testing.assert_allclose(got["eval/ce_unrecovered/pgd"], expected, rtol=RTOL)
    got = by_steps[0]
    for t in ROUND_THRESHOLDS:  # S14.10
        for metric in ("ce", "kl"):
            key = f"{metric}/{rounded_name(t)}"
            np.testing.assert_allclose(got[f"eval/{key}"], want[key], rtol=RTOL, err_msg=key)
    for mask in ("ci", rounded_name(0.1)):  # S14.9
        expected = _gap(want[f"ce/{mask}"], want["ce/target"], want["ce/zero"])
        np.testing.assert_allclose(got[f"eval/ce_unrecovered/{mask}"], expected, rtol=RTOL)
    np.testing.assert_allclose(got["eval/ce_unrecovered/zero"], 1.0, rtol=1e-6)
    for layer in want["layers"]:  # S14.11
        expected = 1 - _gap(want[f"{layer}/rounded"], want["ce/target"], want[f"{layer}/zero"])
        np.testing.assert_allclose(got[f"eval/carried/{layer}"], expected, rtol=RTOL, atol=1e-6)
        for mask in ("rounded", "zero"):
            key = f"eval/ce/carry_{mask}/{layer}"
            np.testing.assert_allclose(got[key], want[f"{layer}/{mask}"], rtol=RTOL, err_msg=key)
    subset_ce = [want[f"subset/{j}"] for j in range(len(want["subsets"]))]  # S14.12
    worst = int(np.argmax(subset_ce))
    np.testing.assert_allclose(got["eval/ce/stochastic_worst_subset"], subset_ce[worst], rtol=RTOL)
    flags = [got[f"eval/stochastic_worst_subset/{layer}"] for layer in want["layers"]]
    assert flags == [float(i in want["subsets"][worst]) for i in range(len(want["layers"]))]
    assert len(want["subsets"]) == 3  # two layers: {0}, {1}, {0, 1}
    for s in nnx.merge(session.graphdef, params).site_names:
        np.testing.assert_allclose(got[f"eval/ci_l0_any/{s}"], want[f"l0_any/{s}"], rtol=1e-6)
        expected = float(np.mean(want[f"ci_mean/{s}"] > ALIVE_MEAN_CI))
        assert got[f"eval/alive_mean_ci_frac/{s}"] == pytest.approx(expected), s


def test_pgd_ascent_raises_the_kl_above_its_start(session: Session) -> None:
    """20 sign-ascent steps (the default) end above where they started (S14.10)."""
    params, target_state = _host(session)
    start, ascended = (_tier(session, params, target_state, n) for n in (0, 20))
    assert ascended["eval/kl/pgd"] > 1.5 * start["eval/kl/pgd"], (start, ascended)
    assert ascended["eval/kl/pgd"] > ascended["eval/kl/stochastic"]


def _forced(session: Session, ci_by_layer: dict[str, float]) -> tuple[nnx.State, nnx.State]:
    """V U = W exactly at every site (C = 64 >= every d_in) and each layer's CI forced to a
    constant through its per-site CI MLP (last weight 0, last bias ±10: CI 1 or 0)."""
    cfg = session.cfg
    target = nnx.merge(session.target_graphdef, session.target_state)
    weights = {s: np.asarray(w) for s, w in target.site_weights().items()}
    C = 64
    raw = cfg.decomposition.model_dump() | {"sites": [{"pattern": "layers.*.mlp.*", "C": C}]}
    dec = type(cfg.decomposition).model_validate(raw)
    shapes = {
        s: weights[s].shape for s in nnx.merge(session.graphdef, session.state.params).site_names
    }
    model = DecompositionModel(dec, shapes, rngs=nnx.Rngs(params=0))
    layer_of = {s: layer for layer, members in site_layers(list(shapes)).items() for s in members}
    for site in shapes:
        d_in, d_out = weights[site].shape
        comp = model.components[site.replace(".", "_")]
        comp.V = nnx.Param(jnp.eye(d_in, C, dtype=jnp.float32))
        comp.U = nnx.Param(jnp.zeros((C, d_out), jnp.float32).at[:d_in].set(weights[site]))
        ci_fn = model.ci_fns[site.replace(".", "_")]
        ci_fn.weights[-1] = nnx.Param(jnp.zeros_like(ci_fn.weights[-1][...]))
        level = 10.0 if ci_by_layer[layer_of[site]] > 0.5 else -10.0
        ci_fn.biases[-1] = nnx.Param(jnp.full_like(ci_fn.biases[-1][...], level))
    graphdef, params = nnx.split(model)
    return graphdef, params, cfg.model_copy(update={"decomposition": dec})


def test_s14_11_carry_separates_a_healthy_layer_from_a_collapsed_one(session: Session) -> None:
    """Layer 0 carried by its components (CI 1 on every component, V U = W): carried = 1.
    Layer 1 collapsed (CI 0 everywhere, its function nowhere): carried = 0. The whole-model
    figures would not say which layer is which; the carry check does."""
    graphdef, params, cfg = _forced(session, {"layers.0": 1.0, "layers.1": 0.0})
    _, target_state = _host(session)
    got = fast_tier(cfg, graphdef, params, session.target_graphdef, target_state, _batches(session))
    assert got["eval/carried/layers.0"] == pytest.approx(1.0, abs=1e-4)
    assert got["eval/carried/layers.1"] == pytest.approx(0.0, abs=1e-4)
    assert got["eval/ci_l0/layers.0.mlp.up"] == 64 and got["eval/ci_l0/layers.1.mlp.up"] == 0
    assert got["eval/ce_unrecovered/ci"] > 0.1  # the collapsed layer costs the whole model


def test_s14_13_a_layer_that_carries_almost_nothing_is_not_judged(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """carry_gap is the nats the layer's zero-ablation costs. Judged at the 0.05-nat floor, a
    layer above it keeps its carried value; with the floor moved above layer 1's gap, layer 1's
    carried turns NaN, flagged not applicable, and the summary table says why."""
    from param_decomp.eval import fast_tier as tier
    from param_decomp.jobs.decompose import carried_cell

    graphdef, params, cfg = _forced(session, {"layers.0": 1.0, "layers.1": 0.0})
    _, target_state = _host(session)
    batches = _batches(session)
    got = fast_tier(cfg, graphdef, params, session.target_graphdef, target_state, batches)
    for layer in ("layers.0", "layers.1"):
        gap = got[f"eval/ce/carry_zero/{layer}"] - got["eval/ce/target"]
        assert got[f"eval/carry_gap/{layer}"] == pytest.approx(gap)
        assert got[f"eval/carry_applicable/{layer}"] == float(gap >= tier.CARRY_MIN_GAP_NATS)
    gap1 = got["eval/carry_gap/layers.1"]
    assert gap1 >= tier.CARRY_MIN_GAP_NATS  # the micro target's layers do carry something
    assert carried_cell(got, "eval/carried/layers.1") == pytest.approx(0.0, abs=1e-4)

    floor = (gap1 + got["eval/carry_gap/layers.0"]) / 2
    assert got["eval/carry_gap/layers.0"] > gap1, "the test needs layer 0 to cost more"
    monkeypatch.setattr(tier, "CARRY_MIN_GAP_NATS", floor)
    moved = fast_tier(cfg, graphdef, params, session.target_graphdef, target_state, batches)
    assert moved["eval/carry_applicable/layers.1"] == 0.0
    assert np.isnan(moved["eval/carried/layers.1"])
    assert moved["eval/carry_applicable/layers.0"] == 1.0
    assert moved["eval/carried/layers.0"] == pytest.approx(1.0, abs=1e-4)
    cell = carried_cell(moved, "eval/carried/layers.1")
    assert isinstance(cell, str) and cell.startswith("n/a: zero-ablation costs")
