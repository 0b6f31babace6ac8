"""The fast evaluation tier (S14.2-S14.6): masked-model CE/KL (LM) or MSE (toy) under fixed
masks, CI-L0 and alive fractions, on the fixed eval batches with a fixed key.

Run every `eval.every` steps during training and at the end (merged into that step's record of
metrics.jsonl) and written to eval.json. Every masked forward runs all sites live at once (the
`routing: all` forward of `masked_forward.masked_site_fn`) and reuses the clean forward's
products (S9.4). Mask m per site and position (S14.2):

| name         | m                                   | delta channel |
|--------------|-------------------------------------|---------------|
| `unmasked`   | 1 (the component model V U)         | off           |
| `ci`         | ci_lower                            | off           |
| `rounded_ci` | 1[ci_lower > 0.5]                   | off           |
| `stochastic` | ci_lower + (1 - ci_lower) u         | as configured |
| `random`     | u, independent of the CI            | as configured |
| `zero`       | 0 (every component off)             | as configured |

u ~ U[0, 1] per component; "as configured" = on (delta ~ U[0, 1] per position) iff a
stochastic reconstruction term of the loss list has its delta channel on.

Keys: LM targets `eval/ce/target` and `eval/ce/<mask>`, `eval/kl/<mask>` (nats per token,
KL(target || masked) per position); toy targets `eval/mse/<mask>` against the target output;
both `eval/ci_l0/<site>`, `eval/ci_l0/mean`, `eval/alive_frac/<site>`, `eval/alive_frac/all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array

from param_decomp.config.schema import DecomposeConfig
from param_decomp.decomposition.masked_forward import clean_forward, inner_acts, masked_site_fn
from param_decomp.decomposition.sources import ReconPlan, draw_plan_sources
from param_decomp.losses.distances import kl_per_position_mean, mse
from param_decomp.losses.lm_objectives import cross_entropy
from param_decomp.losses.lm_terms import next_token_pairs
from param_decomp.objective import Objective
from param_decomp.targets.token_lm import TokenLM

MASKS = ("unmasked", "ci", "rounded_ci", "stochastic", "random", "zero")
ROUND_THRESHOLD = 0.5  # rounded_ci: a component is on where ci_lower > 0.5 (S14.2)
KEY_OFFSET = 30_000  # the fast tier's fixed key: jax.random.key(seed + KEY_OFFSET)


@dataclass(frozen=True)
class FastTierSpec:
    """The static part of the evaluation (hashable: a jit static argument)."""

    threshold: float  # eval.ci_alive_threshold, for CI-L0 and alive
    delta: bool  # delta channel of the stochastic / random / zero masks


def spec_of(cfg: DecomposeConfig) -> FastTierSpec:
    """Delta "as configured": on iff a stochastic plan of the loss list has it on."""
    plans = Objective.from_terms(cfg.losses).plans
    delta = any(p.delta for p in plans if p.routing != "ci")
    return FastTierSpec(cfg.eval.ci_alive_threshold, delta)


@partial(jax.jit, static_argnames=("graphdef", "target_graphdef", "spec"))
def _batch_stats(
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    spec: FastTierSpec,
    params: nnx.State,
    target_state: nnx.State,
    x: Array,
    key: Array,
) -> dict[str, Any]:
    """One eval batch: each mask's batch-mean distances, the per-site CI-L0 sum over positions
    and the per-site alive flags. Module-level jit with the structure static, so every
    evaluation of a run (and the end-of-run one) reuses one compiled program per batch shape."""
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    sites = model.site_names
    clean, record = clean_forward(target, x, sites)
    VU = model.all_VU()
    acts = inner_acts(record, VU)
    ci, _ = model.causal_importances(model.ci_taps(record), VU, acts)
    batch_shape = target.batch_shape(x)
    plan = ReconPlan("all", "continuous", 1, spec.delta)
    k_stoch, k_rand, k_zero = jax.random.split(key, 3)
    stoch = draw_plan_sources(plan, k_stoch, batch_shape, sites, model.site_C)[0][0]
    rand = draw_plan_sources(plan, k_rand, batch_shape, sites, model.site_C)[0][0]
    zero = draw_plan_sources(plan, k_zero, batch_shape, sites, model.site_C)[0][0]
    zeros = {s: jnp.zeros_like(ci[s]) for s in sites}
    ones = {s: jnp.ones_like(ci[s]) for s in sites}
    rounded = {s: (ci[s] > ROUND_THRESHOLD).astype(ci[s].dtype) for s in sites}
    no_delta: dict[str, Any] = {"delta_source": {}, "routed": None}
    # masked_site_fn forms mask = base + (1 - base) * source: source 0 gives m = base exactly
    masks: dict[str, tuple[dict[str, Array], dict[str, Any], bool]] = {
        "unmasked": (ones, {**no_delta, "mask_source": zeros}, False),
        "ci": (ci, {**no_delta, "mask_source": zeros}, False),
        "rounded_ci": (rounded, {**no_delta, "mask_source": zeros}, False),
        "stochastic": (ci, stoch, spec.delta),
        "random": (zeros, rand, spec.delta),
        "zero": (zeros, {**zero, "mask_source": zeros}, spec.delta),
    }
    lm = isinstance(target, TokenLM)
    out: dict[str, Any] = {}
    if lm:
        out["ce/target"] = cross_entropy(*next_token_pairs(clean, x))
    for name, (base, forward, use_delta) in masks.items():
        site_fn = masked_site_fn(sites, VU, base, forward, use_delta, record, acts)
        masked = target(x, site_fn)
        if lm:
            out[f"ce/{name}"] = cross_entropy(*next_token_pairs(masked, x))
            out[f"kl/{name}"] = kl_per_position_mean(masked, clean)
        else:
            out[f"mse/{name}"] = mse(masked, clean)
    above = {s: ci[s] > spec.threshold for s in sites}
    l0_sum = {s: jnp.sum(above[s].astype(jnp.float32)) for s in sites}
    alive = {s: jnp.any(above[s].reshape(-1, above[s].shape[-1]), axis=0) for s in sites}
    n = jnp.asarray(int(np.prod(batch_shape)), jnp.int32)
    return {"means": out, "l0_sum": l0_sum, "alive": alive, "n": n}


@partial(jax.jit, static_argnames=("graphdef", "target_graphdef", "threshold"))
def _probe_alive(
    graphdef: nnx.GraphDef,
    target_graphdef: nnx.GraphDef,
    threshold: float,
    params: nnx.State,
    target_state: nnx.State,
    x: Array,
) -> dict[str, Array]:
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    _, record = clean_forward(target, x, model.site_names)
    ci, _ = model.causal_importances(model.ci_taps(record), model.all_VU())
    return {s: jnp.any((c > threshold).reshape(-1, c.shape[-1]), axis=0) for s, c in ci.items()}


def fast_tier(
    cfg: DecomposeConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    batches: list[Array],
    probe: Array | None = None,
) -> dict[str, float]:
    """The fast-tier metrics (module docstring) over `batches`, each weighted by its number of
    positions (rows for toys, tokens for LMs). Batch i uses fold_in(key(seed + KEY_OFFSET), i),
    so two evaluations of the same params on the same batches agree exactly. `probe` (the
    source's single-feature inputs / first val window) also counts for alive (S14.1)."""
    if not batches:
        raise ValueError("the fast tier needs at least one eval batch")
    spec = spec_of(cfg)
    key = jax.random.key(cfg.seed + KEY_OFFSET)
    model_sites = nnx.merge(graphdef, params).site_names
    sums: dict[str, float] = {}
    l0 = dict.fromkeys(model_sites, 0.0)
    alive: dict[str, np.ndarray] = {}
    total = 0
    for i, x in enumerate(batches):
        stats = jax.device_get(
            _batch_stats(
                graphdef,
                target_graphdef,
                spec,
                params,
                target_state,
                x,
                jax.random.fold_in(key, i),
            )
        )
        n = int(stats["n"])
        total += n
        for k, v in stats["means"].items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        for s in model_sites:
            l0[s] += float(stats["l0_sum"][s])
            flags = np.asarray(stats["alive"][s])
            alive[s] = flags if s not in alive else alive[s] | flags
    if probe is not None:
        flags = jax.device_get(
            _probe_alive(graphdef, target_graphdef, spec.threshold, params, target_state, probe)
        )
        alive = {s: alive[s] | np.asarray(flags[s]) for s in model_sites}
    result = {f"eval/{k}": v / total for k, v in sums.items()}
    for s in model_sites:
        result[f"eval/ci_l0/{s}"] = l0[s] / total
    result["eval/ci_l0/mean"] = float(np.mean([l0[s] / total for s in model_sites]))
    for s in model_sites:
        result[f"eval/alive_frac/{s}"] = float(np.mean(alive[s]))
    result["eval/alive_frac/all"] = float(np.mean(np.concatenate([alive[s] for s in model_sites])))
    return result
