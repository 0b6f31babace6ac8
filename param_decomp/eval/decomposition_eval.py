"""End-of-run evaluation: CI on single-feature inputs and eval batches, alive counts, losses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from param_decomp.config.schema import DecomposeConfig, SparseFeatureData
from param_decomp.data.sparse_features import one_feature_inputs, sample_sparse_features
from param_decomp.decomposition.masked_forward import recording_site_fn
from param_decomp.eval.summary import alive_components
from param_decomp.objective import Objective
from param_decomp.train.step import objective_loss


def causal_importance_on(model: Any, target: Any, x: jax.Array) -> dict[str, jax.Array]:
    """ci_lower of every site on inputs x."""
    inputs: dict[str, jax.Array] = {}
    target(x, recording_site_fn(inputs))
    lower, _ = model.causal_importances({s: inputs[s] for s in model.site_names}, model.all_VU())
    return lower


def evaluate_decomposition(
    cfg: DecomposeConfig,
    objective: Objective,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    data_cfg: SparseFeatureData,
) -> dict[str, Any]:
    """Per-site alive counts (CI > threshold on any eval datapoint), CI matrix, eval losses."""
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    n_features = target.n_features
    one_hot_ci = jax.jit(lambda x: causal_importance_on(model, target, x))(
        one_feature_inputs(n_features)
    )
    eval_key = jax.random.key(cfg.seed + 10_000)
    loss_fn = jax.jit(
        lambda x, k: objective_loss(
            objective, graphdef, target_graphdef, params, target_state, x, k, jnp.ones(())
        )
    )
    ci_fn = jax.jit(lambda x: causal_importance_on(model, target, x))
    alive = {
        s: np.asarray(alive_components(np.asarray(c), cfg.eval.ci_alive_threshold))
        for s, c in one_hot_ci.items()
    }
    sums: dict[str, float] = {}
    for i in range(cfg.eval.n_batches):
        k_data, k_mask = jax.random.split(jax.random.fold_in(eval_key, i))
        x = sample_sparse_features(k_data, cfg.eval.batch_size, n_features, data_cfg)
        _, metrics = loss_fn(x, k_mask)
        for k, v in metrics.items():
            if k.startswith("train/loss/"):
                key = "eval/loss/" + k.removeprefix("train/loss/")
                sums[key] = sums.get(key, 0.0) + float(v) / cfg.eval.n_batches
        for s, c in ci_fn(x).items():
            alive[s] = alive[s] | alive_components(np.asarray(c), cfg.eval.ci_alive_threshold)
    VU = {s: tuple(np.asarray(a) for a in vu) for s, vu in model.all_VU().items()}
    return {
        "alive": alive,
        "one_hot_ci": {s: np.asarray(c) for s, c in one_hot_ci.items()},
        "losses": sums,
        "VU": VU,
    }
