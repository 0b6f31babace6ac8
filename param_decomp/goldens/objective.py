"""Golden family for the composed toy objective: pins how the terms compose (S9)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from param_decomp.config.schema import TMSModel
from param_decomp.decomposition.masked_forward import clean_forward
from param_decomp.goldens.registry import Case, Comparison, as_array, compare_tree, register_family
from param_decomp.losses.faithfulness import Faithfulness
from param_decomp.losses.importance import ImportanceMinimality
from param_decomp.losses.reconstruction import StochasticRecon, StochasticReconLayerwise
from param_decomp.objective import Objective
from param_decomp.targets.tms import TMS


def f32(x: object) -> jax.Array:
    return jnp.asarray(as_array(x), jnp.float32)


def _target(case: Case) -> TMS:
    t = case["inputs"]["target"]
    W1 = f32(t["linear1.W_out_in"]).T
    n_features, n_hidden = W1.shape
    model = TMS(
        TMSModel(type="tms", n_features=n_features, n_hidden=n_hidden, tied_weights=False),
        rngs=nnx.Rngs(0),
    )
    model.W1.value = W1
    model.W2.value = f32(t["linear2.W_out_in"]).T
    model.b_final.value = f32(t["linear2.bias"])
    return model


@register_family("tms_objective")
def tms_objective(case: Case) -> list[Comparison]:
    i = case["inputs"]
    coeffs = {k: float(v) for k, v in i["coeffs"].items()}
    delta = bool(i["use_delta_component"])
    objective = Objective.from_terms(
        (
            Faithfulness(coeff=coeffs["faithfulness"]),
            ImportanceMinimality(
                coeff=coeffs["importance_minimality"], pnorm=float(i["pnorm"]), eps=float(i["eps"])
            ),
            StochasticRecon(coeff=coeffs["stochastic_recon"], delta_component=delta),
            StochasticReconLayerwise(
                coeff=coeffs["stochastic_recon_layerwise"], delta_component=delta
            ),
        )
    )
    target = _target(case)
    sites = tuple(i["sites"])
    x = f32(i["x"])
    weights = {s: w for s, w in target.site_weights().items() if s in sites}
    site = {s: {k: f32(v) for k, v in i["sites"][s].items()} for s in sites}

    def forward(src_key: str, delta_key: str) -> dict:
        return {
            "mask_source": {s: site[s][src_key] for s in sites},
            "delta_source": {s: site[s][delta_key] for s in sites},
            "routed": None,
        }

    all_plan, each_plan = objective.plans
    sources = {
        all_plan: [[forward("stochastic_recon_source", "stochastic_recon_delta_source")]],
        each_plan: [[forward("layerwise_source", "layerwise_delta_source") for _ in sites]],
    }

    def total_and_terms(diff: dict) -> tuple[jax.Array, dict]:
        VU = {s: (diff[s]["V"], diff[s]["U"]) for s in sites}
        ci_lower = {s: diff[s]["ci_lower"] for s in sites}
        ci_upper = {s: diff[s]["ci_upper"] for s in sites}
        clean, record = clean_forward(target, x, sites)
        ctx = objective.context_from_ci(
            target, x, clean, record, weights, VU, ci_lower, ci_upper, sources, 0.0
        )
        total, metrics = objective.evaluate(ctx)
        return total, {
            k.removeprefix("train/loss/"): v
            for k, v in metrics.items()
            if k.startswith("train/loss/")
        }

    diff = {s: {k: site[s][k] for k in ("V", "U", "ci_lower", "ci_upper")} for s in sites}
    (total, terms), grad = jax.value_and_grad(total_and_terms, has_aux=True)(diff)
    got = {"terms": {k: terms[k] for k in case["expected"]["terms"]}, "total": total, "grad": grad}
    return compare_tree("", got, case["expected"])
