"""The fast evaluation tier (S14.2-S14.6, S14.9-S14.12): masked-model CE/KL (LM) or MSE (toy)
under fixed masks, how much of the ablation gap each mask leaves, per-layer carry, CI-L0 and
alive counts, on the fixed eval batches with a fixed key.

Run every `eval.every` steps during training and at the end (merged into that step's record of
metrics.jsonl) and written to eval.json. Every masked forward reuses the clean forward's
products (S9.4). Masks m per site and position, every site live (S14.3, S14.10):

| name              | m                                          | delta channel |
|-------------------|--------------------------------------------|---------------|
| `unmasked`        | 1 (the component model V U)                | off           |
| `ci`              | ci_lower                                   | off           |
| `rounded_ci>0`    | 1[ci_lower > 0]                            | off           |
| `rounded_ci>0.1`  | 1[ci_lower > 0.1]                          | off           |
| `rounded_ci>0.5`  | 1[ci_lower > 0.5]                          | off           |
| `stochastic`      | ci_lower + (1 - ci_lower) u                | as configured |
| `random`          | u, independent of the CI                   | as configured |
| `zero`            | 0 (every component off)                    | as configured |
| `pgd`             | ci_lower + (1 - ci_lower) s, s adversarial | off           |

u ~ U[0, 1] per component; "as configured" = on (delta ~ U[0, 1] per position) iff a
stochastic reconstruction term of the loss list has its delta channel on. `pgd`: s per site
and component, shared over the batch, from U[0, 1] by `eval.pgd_steps` sign-ascent steps of
`eval.pgd_step_size` on the KL (LM) / MSE (toy), clamped to [0, 1] (S14.10).

Keys: LM targets `eval/ce/target`, `eval/ce/<mask>`, `eval/kl/<mask>` (nats per token,
KL(target || masked) per position) and `eval/ce_unrecovered/<mask>` (S14.9); toy targets
`eval/mse/<mask>` against the target output. Both: `eval/carried/<layer>` (S14.11) and the two
distances it compares, `eval/{ce|mse}/carry_rounded/<layer>` and `carry_zero/<layer>`; the worst
layer subset under the stochastic mask (S14.12), `eval/ci_l0/<site>` (CI > threshold),
`eval/ci_l0_any/<site>` (CI > 0), `eval/ci_l0/mean`, for LMs `eval/carry_gap/<layer>` (nats the
layer's zero-ablation costs) and `eval/carry_applicable/<layer>` (1, or 0 with carried NaN when
that gap is under CARRY_MIN_GAP_NATS, S14.13), `eval/alive_frac/<site>` and
`eval/alive_frac/all` (threshold, S14.6), `eval/alive_mean_ci_frac/<site>` (mean CI > 1e-6).
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
from param_decomp.decomposition.components import masked_product_sum, stochastic_mask
from param_decomp.decomposition.masked_forward import clean_forward, inner_acts, masked_site_fn
from param_decomp.decomposition.sites import site_layers
from param_decomp.decomposition.sources import ReconPlan, draw_plan_sources
from param_decomp.losses.distances import kl_per_position_mean, mse
from param_decomp.losses.lm_objectives import cross_entropy
from param_decomp.losses.lm_terms import next_token_pairs
from param_decomp.objective import Objective
from param_decomp.targets.base import site_product
from param_decomp.targets.token_lm import TokenLM

ROUND_THRESHOLDS = (0.0, 0.1, 0.5)  # the rounded masks: on where ci_lower > t (S14.3)
CARRY_THRESHOLD = 0.1  # the layer-carry check rounds at this CI (S14.11)
# S14.13: an LM layer whose zero-ablation costs less than this (nats per token) carries too
# little for its carried ratio to mean anything: a ratio of two small numbers
CARRY_MIN_GAP_NATS = 0.05
ALIVE_MEAN_CI = 1e-6  # alive by mean CI: the reference's count (S14.6)
MAX_SUBSET_LAYERS = 6  # up to 2^6 - 1 layer subsets; above, single layers and all-but-one
KEY_OFFSET = 30_000  # the fast tier's fixed key: jax.random.key(seed + KEY_OFFSET)


def rounded_name(threshold: float) -> str:
    return f"rounded_ci>{threshold:g}"


MASKS = (
    "unmasked",
    "ci",
    *(rounded_name(t) for t in ROUND_THRESHOLDS),
    "stochastic",
    "random",
    "zero",
    "pgd",
)


@dataclass(frozen=True)
class FastTierSpec:
    """The static part of the evaluation (hashable: a jit static argument)."""

    threshold: float  # eval.ci_alive_threshold, for CI-L0 and alive
    delta: bool  # delta channel of the stochastic / random / zero masks
    pgd_steps: int  # eval.pgd_steps (0: the pgd mask is the CI mask with s = its start)
    pgd_step_size: float
    layers: tuple[tuple[str, tuple[str, ...]], ...]  # (layer, its sites), S14.11
    subsets: tuple[tuple[int, ...], ...]  # layer subsets for the worst-subset check, S14.12


def layer_subsets(n_layers: int) -> tuple[tuple[int, ...], ...]:
    """Every nonempty subset of the layers (by index) up to MAX_SUBSET_LAYERS layers; above, each
    layer alone and each all-but-one (2 n subsets instead of 2^n - 1)."""
    if n_layers <= MAX_SUBSET_LAYERS:
        return tuple(
            tuple(i for i in range(n_layers) if bits >> i & 1) for bits in range(1, 2**n_layers)
        )
    singles = tuple((i,) for i in range(n_layers))
    return singles + tuple(tuple(j for j in range(n_layers) if j != i) for i in range(n_layers))


def spec_of(cfg: DecomposeConfig, sites: tuple[str, ...]) -> FastTierSpec:
    """Delta "as configured": on iff a stochastic plan of the loss list has it on."""
    plans = Objective.from_terms(cfg.losses).plans
    delta = any(p.delta for p in plans if p.routing != "ci")
    layers = tuple(site_layers(sites).items())
    return FastTierSpec(
        cfg.eval.ci_alive_threshold,
        delta,
        cfg.eval.pgd_steps,
        cfg.eval.pgd_step_size,
        layers,
        layer_subsets(len(layers)),
    )


def subset_name(spec: FastTierSpec, subset: tuple[int, ...]) -> str:
    return "+".join(spec.layers[i][0] for i in subset)


# what each of an eval batch's keys draws, in split order
BATCH_KEYS = ("stochastic", "random", "zero", "pgd")


def pgd_start(key: Array, site_C: dict[str, int]) -> dict[str, Array]:
    """The pgd mask's starting sources: U[0, 1], one per (site, component), shared over the
    batch and positions (S14.10)."""
    keys = jax.random.split(key, len(site_C))
    return {s: jax.random.uniform(k, (C,)) for (s, C), k in zip(site_C.items(), keys, strict=True)}


# the delta channel a forward uses, by index: none, or the sources drawn for one of the masks
_DELTAS = ("none", "stochastic", "random", "zero")


@dataclass(frozen=True)
class _Forward:
    """One masked forward of the fast tier: which sites are live, the mask they take and the
    delta channel they use; every other site runs x @ W."""

    live: tuple[str, ...]
    mask: str  # one of MASKS (a site's candidate masks are stacked in that order)
    delta: str  # one of _DELTAS


def _forwards(spec: FastTierSpec, sites: tuple[str, ...]) -> dict[str, list]:
    """Every masked forward of one eval batch, grouped as the result reports them."""
    configured = ("stochastic", "random", "zero")
    masks = [
        _Forward(sites, name, name if spec.delta and name in configured else "none")
        for name in MASKS
    ]
    carry = rounded_name(CARRY_THRESHOLD)
    per_layer = [
        (_Forward(members, carry, "none"), _Forward(members, "zero", "none"))
        for _, members in spec.layers
    ]
    delta = "stochastic" if spec.delta else "none"
    per_subset = [
        _Forward(tuple(s for i in subset for s in spec.layers[i][1]), "stochastic", delta)
        for subset in spec.subsets
    ]
    return {"masks": masks, "per_layer": per_layer, "per_subset": per_subset}


def _tables(forwards: list[_Forward], sites: tuple[str, ...]) -> tuple[Array, Array, Array]:
    """The forwards as index tables a scan can read: live (K, S) bool, mask index (K, S) and
    delta index (K,)."""
    live = np.array([[s in f.live for s in sites] for f in forwards], bool)
    mask = np.array([[MASKS.index(f.mask)] * len(sites) for f in forwards], np.int32)
    delta = np.array([_DELTAS.index(f.delta) for f in forwards], np.int32)
    return jnp.asarray(live), jnp.asarray(mask), jnp.asarray(delta)


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
    """One eval batch: each mask's batch-mean distances (all sites, each layer alone, each layer
    subset), the per-site CI-L0 sums over positions, CI sums per component and alive flags.

    All masked forwards (9 masks, 2 per layer, one per layer subset) run as ONE scanned body
    that reads its live sites, mask and delta channel from index tables: a site that is not
    live takes x @ W exactly (a zero component coefficient and a unit weight on x W, as for
    positions not routed to a site, S2.3). Unrolled, a 3-layer LM's 22 forwards took minutes to
    compile; scanned, the program holds the target's forward twice (scan body and PGD).
    Module-level jit with the structure static, so every evaluation of a run (and the
    end-of-run one) reuses one compiled program per batch shape."""
    model = nnx.merge(graphdef, params)
    target = nnx.merge(target_graphdef, target_state)
    sites = model.site_names
    clean, record = clean_forward(target, x, sites)
    VU = model.all_VU()
    acts = inner_acts(record, VU)
    ci, _ = model.causal_importances(model.ci_taps(record), VU, acts)
    batch_shape = target.batch_shape(x)
    plan = ReconPlan("all", "continuous", 1, spec.delta)
    k_stoch, k_rand, k_zero, k_pgd = jax.random.split(key, len(BATCH_KEYS))
    stoch = draw_plan_sources(plan, k_stoch, batch_shape, sites, model.site_C)[0][0]
    rand = draw_plan_sources(plan, k_rand, batch_shape, sites, model.site_C)[0][0]
    zero = draw_plan_sources(plan, k_zero, batch_shape, sites, model.site_C)[0][0]
    no_delta: dict[str, Any] = {"delta_source": {}, "routed": None}
    lm = isinstance(target, TokenLM)

    def distances(masked: Array) -> dict[str, Array]:
        """CE and KL (LM) or MSE (toy) of a masked output against the clean one."""
        if lm:
            return {
                "ce": cross_entropy(*next_token_pairs(masked, x)),
                "kl": kl_per_position_mean(masked, clean),
            }
        return {"mse": mse(masked, clean)}

    def adversary_loss(sources: dict[str, Array]) -> Array:
        forward = {**no_delta, "mask_source": sources}
        masked = target(x, masked_site_fn(sites, VU, ci, forward, False, record, acts))
        return distances(masked)["kl" if lm else "mse"]

    def ascend(_: int, sources: dict[str, Array]) -> dict[str, Array]:
        grads = jax.grad(adversary_loss)(sources)
        return {
            s: jnp.clip(sources[s] + spec.pgd_step_size * jnp.sign(grads[s]), 0.0, 1.0)
            for s in sites
        }

    pgd = pgd_start(k_pgd, model.site_C)
    if spec.pgd_steps:  # a static count: with 0 the ascent (a backward pass) is not compiled
        pgd = jax.lax.fori_loop(0, spec.pgd_steps, ascend, pgd)
    pgd = jax.tree.map(jax.lax.stop_gradient, pgd)
    candidates = {  # per site, every mask of MASKS stacked in that order
        s: jnp.stack(
            [
                jnp.ones_like(ci[s]),
                ci[s],
                *((ci[s] > t).astype(ci[s].dtype) for t in ROUND_THRESHOLDS),
                stochastic_mask(ci[s], stoch["mask_source"][s]),
                rand["mask_source"][s],
                jnp.zeros_like(ci[s]),
                stochastic_mask(ci[s], pgd[s]),
            ]
        )
        for s in sites
    }
    no_delta_source = jnp.zeros(batch_shape, ci[sites[0]].dtype)
    deltas = {  # per site, every delta channel of _DELTAS stacked in that order
        s: jnp.stack(
            [no_delta_source]
            + [d["delta_source"][s] if spec.delta else no_delta_source for d in (stoch, rand, zero)]
        )
        for s in sites
    }
    groups = _forwards(spec, sites)
    flat = [
        *groups["masks"],
        *(f for pair in groups["per_layer"] for f in pair),
        *groups["per_subset"],
    ]
    live_table, mask_table, delta_table = _tables(flat, sites)

    def one_forward(row: tuple[Array, Array, Array]) -> dict[str, Array]:
        live, mask_index, delta_index = row
        index = {s: i for i, s in enumerate(sites)}

        def site_fn(name: str, h: Array, W: Array) -> Array:
            if name not in index:
                return site_product(h, W)
            i = index[name]
            V, U = VU[name]
            routed = jnp.broadcast_to(live[i], batch_shape)
            return masked_product_sum(
                site_product(h, V),
                U,
                candidates[name][mask_index[i]],
                site_product(h, W),
                deltas[name][delta_index],
                routed,
            )

        return distances(target(x, site_fn))

    values = jax.lax.map(one_forward, (live_table, mask_table, delta_table))
    at = iter(range(len(flat)))

    def take() -> dict[str, Array]:
        k = next(at)
        return {metric: v[k] for metric, v in values.items()}

    out: dict[str, Any] = {}
    if lm:
        out["ce/target"] = cross_entropy(*next_token_pairs(clean, x))
    for name in MASKS:
        for metric, value in take().items():
            out[f"{metric}/{name}"] = value
    per_layer = {layer: {"rounded": take(), "zero": take()} for layer, _ in spec.layers}
    per_subset = [take() for _ in spec.subsets]
    above = {s: ci[s] > spec.threshold for s in sites}
    l0_sum = {s: jnp.sum(above[s].astype(jnp.float32)) for s in sites}
    l0_any_sum = {s: jnp.sum((ci[s] > 0).astype(jnp.float32)) for s in sites}
    ci_sum = {s: jnp.sum(ci[s].reshape(-1, ci[s].shape[-1]), axis=0) for s in sites}
    alive = {s: jnp.any(above[s].reshape(-1, above[s].shape[-1]), axis=0) for s in sites}
    n = jnp.asarray(int(np.prod(batch_shape)), jnp.int32)
    return {
        "means": out,
        "per_layer": per_layer,
        "per_subset": per_subset,
        "l0_sum": l0_sum,
        "l0_any_sum": l0_any_sum,
        "ci_sum": ci_sum,
        "alive": alive,
        "n": n,
    }


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


def _gap_fraction(value: float, reference: float, ablated: float) -> float:
    """(value - reference) / (ablated - reference); nan when ablating changes nothing."""
    gap = ablated - reference
    return (value - reference) / gap if gap != 0 else float("nan")


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
    positions (rows for toys, tokens for LMs); ratios (unrecovered, carried) are taken of those
    means. Batch i uses fold_in(key(seed + KEY_OFFSET), i), so two evaluations of the same
    params on the same batches agree exactly. `probe` (the source's single-feature inputs /
    first val window) also counts for alive (S14.1)."""
    if not batches:
        raise ValueError("the fast tier needs at least one eval batch")
    model_sites = nnx.merge(graphdef, params).site_names
    spec = spec_of(cfg, model_sites)
    key = jax.random.key(cfg.seed + KEY_OFFSET)
    sums: dict[str, float] = {}
    l0 = dict.fromkeys(model_sites, 0.0)
    l0_any = dict.fromkeys(model_sites, 0.0)
    ci_sum: dict[str, np.ndarray] = {}
    alive: dict[str, np.ndarray] = {}
    total = 0

    def add(name: str, value: Any, n: int) -> None:
        sums[name] = sums.get(name, 0.0) + float(value) * n

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
            add(k, v, n)
        for layer, by_mask in stats["per_layer"].items():
            for mask, metrics in by_mask.items():
                for metric, v in metrics.items():
                    add(f"layer/{layer}/{mask}/{metric}", v, n)
        for j, metrics in enumerate(stats["per_subset"]):
            for metric, v in metrics.items():
                add(f"subset/{j}/{metric}", v, n)
        for s in model_sites:
            l0[s] += float(stats["l0_sum"][s])
            l0_any[s] += float(stats["l0_any_sum"][s])
            sums_s = np.asarray(stats["ci_sum"][s], np.float64)
            ci_sum[s] = sums_s if s not in ci_sum else ci_sum[s] + sums_s
            flags = np.asarray(stats["alive"][s])
            alive[s] = flags if s not in alive else alive[s] | flags
    if probe is not None:
        flags = jax.device_get(
            _probe_alive(graphdef, target_graphdef, spec.threshold, params, target_state, probe)
        )
        alive = {s: alive[s] | np.asarray(flags[s]) for s in model_sites}
    means = {k: v / total for k, v in sums.items()}
    lm = "ce/target" in means
    metric = "ce" if lm else "mse"
    result = {f"eval/{k}": v for k, v in means.items() if not k.startswith(("layer/", "subset/"))}
    if lm:  # S14.9: the share of the zero-ablation gap each mask leaves
        for mask in MASKS:
            result[f"eval/ce_unrecovered/{mask}"] = _gap_fraction(
                means[f"ce/{mask}"], means["ce/target"], means["ce/zero"]
            )
    reference = means["ce/target"] if lm else 0.0  # a toy's target has MSE 0 against itself
    for layer, _ in spec.layers:  # S14.11, with the two distances it is the ratio of
        for mask in ("rounded", "zero"):
            result[f"eval/{metric}/carry_{mask}/{layer}"] = means[f"layer/{layer}/{mask}/{metric}"]
        result[f"eval/carried/{layer}"] = 1.0 - _gap_fraction(
            means[f"layer/{layer}/rounded/{metric}"],
            reference,
            means[f"layer/{layer}/zero/{metric}"],
        )
        if lm:  # S14.13: a layer that carries almost nothing is not judged
            gap = means[f"layer/{layer}/zero/{metric}"] - reference
            applicable = gap >= CARRY_MIN_GAP_NATS
            result[f"eval/carry_gap/{layer}"] = gap
            result[f"eval/carry_applicable/{layer}"] = float(applicable)
            if not applicable:
                result[f"eval/carried/{layer}"] = float("nan")
    subset_values = [means[f"subset/{j}/{metric}"] for j in range(len(spec.subsets))]
    worst = int(np.argmax(subset_values))  # S14.12
    result[f"eval/{metric}/stochastic_worst_subset"] = subset_values[worst]
    for index, (layer, _) in enumerate(spec.layers):
        result[f"eval/stochastic_worst_subset/{layer}"] = float(index in spec.subsets[worst])
    for s in model_sites:
        result[f"eval/ci_l0/{s}"] = l0[s] / total
        result[f"eval/ci_l0_any/{s}"] = l0_any[s] / total
    result["eval/ci_l0/mean"] = float(np.mean([l0[s] / total for s in model_sites]))
    for s in model_sites:
        result[f"eval/alive_frac/{s}"] = float(np.mean(alive[s]))
        result[f"eval/alive_mean_ci_frac/{s}"] = float(np.mean(ci_sum[s] / total > ALIVE_MEAN_CI))
    result["eval/alive_frac/all"] = float(np.mean(np.concatenate([alive[s] for s in model_sites])))
    return result
