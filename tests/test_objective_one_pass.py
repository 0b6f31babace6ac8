"""S9.2: one clean forward, one CI evaluation, one f_c pass per psi, exactly the plans' forwards."""

from collections import Counter

import jax
import jax.numpy as jnp
from flax import nnx

from param_decomp.config.schema import Decomposition, TMSModel
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import FrequencyBlock, ImportanceMinimality
from param_decomp.losses.reconstruction import (
    StochasticRecon,
    StochasticReconLayerwise,
)
from param_decomp.objective import Objective
from param_decomp.targets.tms import TMS


class CountingTarget:
    """Wraps a target and counts forwards by kind (clean vs masked)."""

    def __init__(self, inner: TMS, counts: Counter):
        self.inner, self.counts, self.n_features = inner, counts, inner.n_features

    def site_weights(self) -> dict:
        return self.inner.site_weights()

    def __call__(self, x: jax.Array, site_fn) -> jax.Array:  # noqa: ANN001
        self.counts["target_forward"] += 1
        return self.inner(x, site_fn)


def _setup(terms: tuple) -> tuple:
    target = TMS(TMSModel(type="tms", n_features=5, n_hidden=2), rngs=nnx.Rngs(0))
    cfg = Decomposition(C=6, sites=["linear1", "linear2"])
    model = DecompositionModel(cfg, {"linear1": (5, 2), "linear2": (2, 5)}, rngs=nnx.Rngs(1))
    return target, model, Objective.from_terms(terms)


def test_s9_2_each_shared_quantity_is_computed_once(monkeypatch) -> None:  # noqa: ANN001
    counts: Counter = Counter()
    imp = ImportanceMinimality(
        coeff=1.0, pnorm=2.0, frequency=FrequencyBlock(coeff=0.1, reference_token_count=64)
    )
    terms = (
        Faithfulness(coeff=1.0),
        imp,
        StochasticRecon(coeff=1.0),
        StochasticReconLayerwise(coeff=1.0),
    )
    target, model, objective = _setup(terms)
    real_ci = DecompositionModel.ci_pre_activations

    def counting_ci(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        counts["ci_function"] += 1
        return real_ci(self, *a, **k)

    monkeypatch.setattr(DecompositionModel, "ci_pre_activations", counting_ci)
    psi_calls = Counter()
    real_psi_call = type(imp.psi()).__call__

    def counting_psi(self, *a):  # noqa: ANN001, ANN002
        psi_calls[self] += 1
        return real_psi_call(self, *a)

    monkeypatch.setattr(type(imp.psi()), "__call__", counting_psi)

    wrapped = CountingTarget(target, counts)
    x = jnp.ones((8, 5))

    def loss(params: nnx.State) -> jax.Array:
        m = nnx.merge(*nnx.split(model)[:1], params)
        sources = objective.draw_sources(jax.random.key(0), (8,), m.site_names, m.site_C)
        return objective.evaluate(objective.context(wrapped, m, x, sources, jnp.zeros(())))[0]

    jax.make_jaxpr(jax.grad(loss))(nnx.split(model)[1])
    # 1 clean + 1 all-sites + 2 layerwise (one per site)
    assert counts["target_forward"] == 4, counts
    assert counts["ci_function"] == 1, counts
    # the activity and the frequency part read one shared f_c pass: psi evaluated once per site
    assert sum(psi_calls.values()) == 2, psi_calls


def test_s6_5_two_terms_naming_one_plan_share_its_forward() -> None:
    counts: Counter = Counter()
    a = StochasticRecon(coeff=1.0)
    b = StochasticRecon(coeff=2.0, distance="mse")
    objective = Objective.from_terms((a,))
    assert len(objective.plans) == 1
    # the same plan requested twice by equal specs is still one plan
    assert a.plan() == b.plan()
    target, model, _ = _setup((a,))
    wrapped = CountingTarget(target, counts)
    sources = objective.draw_sources(jax.random.key(0), (4,), model.site_names, model.site_C)
    objective.evaluate(objective.context(wrapped, model, jnp.ones((4, 5)), sources, jnp.zeros(())))
    assert counts["target_forward"] == 2


def test_s6a_4_pgd_adds_exactly_its_ascents_and_one_forward(monkeypatch) -> None:  # noqa: ANN001
    """A fresh PGD term with n_steps ascents adds n_steps + 1 masked forwards (n_steps of them
    inside the ascent, differentiated w.r.t. the sources only); a persistent one with
    n_warmup_steps adds n_warmup_steps + 1, and the gradient w.r.t. its sources comes out of the
    step's one backward (no extra forward). Still one clean forward and one CI evaluation."""
    from param_decomp.losses.adversarial import PersistentPGDRecon, PGDRecon

    for terms, expected in (
        ((StochasticRecon(coeff=1.0), PGDRecon(coeff=1.0, n_steps=3)), 1 + 1 + 3 + 1),
        ((PGDRecon(coeff=1.0, n_steps=0),), 1 + 0 + 1),
        # layerwise: an independent adversary per site (2 sites)
        ((PGDRecon(coeff=1.0, n_steps=2, routing="each"),), 1 + 2 * (2 + 1)),
        (
            (
                StochasticRecon(coeff=1.0),
                PGDRecon(coeff=1.0, n_steps=2, routing="subset"),
                PersistentPGDRecon(coeff=1.0, n_warmup_steps=2),
            ),
            1 + 1 + (2 + 1) + (2 + 1),
        ),
    ):
        counts: Counter = Counter()
        target, model, objective = _setup(terms)
        real_ci = DecompositionModel.ci_pre_activations

        def counting_ci(self, *a, _real=real_ci, _counts=counts, **k):  # noqa: ANN001, ANN002, ANN003
            _counts["ci_function"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(DecompositionModel, "ci_pre_activations", counting_ci)
        wrapped = CountingTarget(target, counts)
        x = jnp.ones((8, 5))
        graphdef, params = nnx.split(model)
        spec = objective.persistent
        adv = {s: jnp.full((c + 1,), 0.5) for s, c in model.site_C.items()} if spec else None

        def loss(p: nnx.State, s, objective=objective, wrapped=wrapped, graphdef=graphdef, x=x):  # noqa: ANN001
            m = nnx.merge(graphdef, p)
            sources = objective.draw_sources(jax.random.key(0), (8,), m.site_names, m.site_C)
            ctx = objective.context(wrapped, m, x, sources, jnp.zeros(()), s)
            return objective.evaluate(ctx)[0]

        jax.make_jaxpr(jax.grad(loss, argnums=(0, 1) if spec else 0))(params, adv)
        assert counts["target_forward"] == expected, (terms, counts)
        assert counts["ci_function"] == 1, counts
        monkeypatch.setattr(DecompositionModel, "ci_pre_activations", real_ci)
