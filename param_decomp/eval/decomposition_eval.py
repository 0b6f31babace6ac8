"""End-of-run evaluation: CI on single-feature inputs and eval batches, alive counts, losses."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from param_decomp.config.schema import DecomposeConfig
from param_decomp.data.sources import BatchSource
from param_decomp.decomposition.masked_forward import clean_forward
from param_decomp.eval.summary import alive_components
from param_decomp.objective import Objective
from param_decomp.train.step import objective_loss


def causal_importance_on(model: Any, target: Any, x: jax.Array) -> dict[str, jax.Array]:
    """ci_lower of every site on inputs x."""
    _, record = clean_forward(target, x, model.site_names)
    lower, _ = model.causal_importances(model.ci_taps(record), model.all_VU())
    return lower


def evaluate_decomposition(
    cfg: DecomposeConfig,
    objective: Objective,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    source: BatchSource,
) -> dict[str, Any]:
    """Per-site alive counts (S14.1: CI > threshold on any eval datapoint), the probe's CI
    matrix (rows: single-feature inputs for toys, tokens of one val sequence for LMs), V/U and
    the eval losses averaged over the eval batches."""
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    threshold = cfg.eval.ci_alive_threshold
    jitted = jax.jit(lambda x: causal_importance_on(model, target, x))

    def ci_fn(x: jax.Array) -> dict[str, jax.Array]:
        """In site order (S1.4): a jitted function returns its dicts with sorted keys."""
        out = jitted(x)
        return {s: out[s] for s in model.site_names}

    loss_fn = jax.jit(
        lambda x, k: objective_loss(
            objective, graphdef, target_graphdef, params, target_state, x, k, jnp.ones(())
        )
    )
    probe_ci = {s: np.asarray(c).reshape(-1, c.shape[-1]) for s, c in ci_fn(source.probe()).items()}
    alive = {s: alive_components(c, threshold) for s, c in probe_ci.items()}
    batches = source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    mask_key = jax.random.key(cfg.seed + 20_000)
    sums: dict[str, float] = {}
    for i, x in enumerate(batches):
        _, metrics = loss_fn(x, jax.random.fold_in(mask_key, i))
        for k, v in metrics.items():
            if k.startswith("train/loss/"):
                key = "eval/loss/" + k.removeprefix("train/loss/")
                sums[key] = sums.get(key, 0.0) + float(v) / len(batches)
        for s, c in ci_fn(x).items():
            alive[s] = alive[s] | alive_components(np.asarray(c), threshold)
    VU = {s: tuple(np.asarray(a) for a in vu) for s, vu in model.all_VU().items()}
    figure_inputs, row_label, title = source.figure_probe()
    figure_ci = {s: np.asarray(c).reshape(-1, c.shape[-1]) for s, c in ci_fn(figure_inputs).items()}
    return {
        "alive": alive,
        "one_hot_ci": probe_ci,
        "figure_ci": figure_ci,
        "figure_rows": row_label,
        "figure_title": title,
        "losses": sums,
        "VU": VU,
    }
