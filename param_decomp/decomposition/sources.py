"""Mask sources and routing for reconstruction plans (S6), drawn from the step's key.

Sources are drawn for the GLOBAL batch from a counter-based key, so they are identical on any
mesh. The drawn pytree is an input of the objective, which lets the goldens inject their own.

Layout of a plan's sources: a list over mask samples; each sample is a list over forwards
(one forward for routing all/subset/ci, one per site for routing each); each forward is
{"mask_source": {site: (*b, C)}, "delta_source": {site: (*b,)}, "routed": {site: (*b,)} | None}
with an entry for each of its LIVE sites only (a non-live site consumes no source).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

Forward = dict[str, Any]

Routing = Literal["all", "each", "subset", "ci"]
SiteC = int | Mapping[str, int]  # one C for every site, or each site's own (S1.4)


def c_of(C: SiteC, site: str) -> int:
    """The number of components of `site`."""
    return C if isinstance(C, int) else C[site]


SourceKind = Literal["continuous", "binomial"]


@dataclass(frozen=True)
class ReconPlan:
    """Which masked forwards a reconstruction term needs (S6).

    routing: all = every site live at once; each = one forward per site with only it live;
    subset = per position a uniform-k subset of sites is live; ci = mask = ci, no source.
    """

    routing: Routing
    source: SourceKind = "continuous"
    n_mask_samples: int = 1
    delta: bool = True


def plan_source_width(plan: ReconPlan, sites: tuple[str, ...], C: SiteC) -> int:
    """Uniforms per position a plan consumes: for every (sample, forward, live site) C_s mask
    sources and one delta source, plus n_sites + 1 per forward for subset routing."""
    if plan.routing == "ci":
        return 0
    # `each` runs one forward per site with that site live, the others one forward with all
    # live: either way every site's C_s + 1 sources once per sample
    per_sample = sum(c_of(C, s) + 1 for s in sites)
    if plan.routing == "subset":
        per_sample += len(sites) + 1
    return plan.n_mask_samples * per_sample


def uniform_k_routing(uniforms: Float[Array, "*b n_plus_1"], n_sites: int) -> Bool[Array, "*b n"]:
    """Per position: k ~ U{1..n_sites} from the first uniform, then a uniform k-subset of sites
    (the k smallest of the other n_sites uniforms) is routed (S6.3)."""
    k = jnp.minimum(jnp.floor(uniforms[..., 0] * n_sites).astype(jnp.int32), n_sites - 1) + 1
    ranks = jnp.argsort(jnp.argsort(uniforms[..., 1:], axis=-1), axis=-1)
    return ranks < k[..., None]


def plan_sources_from_uniforms(
    plan: ReconPlan,
    uniforms: Float[Array, "*b width"],
    batch_shape: tuple[int, ...],
    sites: tuple[str, ...],
    C: SiteC,
) -> list[list[Forward]]:
    """Slice a plan's uniforms (width `plan_source_width`) into its forwards' sources."""
    n_forwards = len(sites) if plan.routing == "each" else 1
    offset = 0

    def take(n: int) -> Array:
        nonlocal offset
        out = uniforms[..., offset : offset + n]
        offset += n
        return out

    samples = []
    for _ in range(plan.n_mask_samples):
        forwards = []
        for f in range(n_forwards):
            fwd: Forward = {"mask_source": {}, "delta_source": {}, "routed": None}
            for s in live_sites(plan, sites, f):
                if plan.routing == "ci":
                    fwd["mask_source"][s] = jnp.zeros((*batch_shape, c_of(C, s)), jnp.float32)
                    fwd["delta_source"][s] = jnp.zeros(batch_shape, jnp.float32)
                    continue
                u = take(c_of(C, s))
                fwd["mask_source"][s] = (
                    (u < 0.5).astype(jnp.float32) if plan.source == "binomial" else u
                )
                fwd["delta_source"][s] = take(1)[..., 0]
            if plan.routing == "subset":
                routed = uniform_k_routing(take(len(sites) + 1), len(sites))
                fwd["routed"] = {s: routed[..., i] for i, s in enumerate(sites)}
            forwards.append(fwd)
        samples.append(forwards)
    return samples


def draw_plans_sources(
    plans: tuple[ReconPlan, ...],
    key: PRNGKeyArray,
    batch_shape: tuple[int, ...],
    sites: tuple[str, ...],
    C: SiteC,
) -> dict[ReconPlan, list[list[Forward]]]:
    """Every source of every plan from ONE uniform draw of shape (*batch, total width).

    One draw is one threefry evaluation per step (XLA:CPU runs it as a rolled loop, so each
    separate draw costs several small kernels per round); each position's row depends only on
    the key and the position, so the sources do not depend on the mesh (S6.5).
    """
    widths = [plan_source_width(p, sites, C) for p in plans]
    total = sum(widths)
    uniforms = (
        jax.random.uniform(key, (*batch_shape, total), jnp.float32)
        if total
        else jnp.zeros((*batch_shape, 0), jnp.float32)
    )
    out, offset = {}, 0
    for plan, width in zip(plans, widths, strict=True):
        chunk = uniforms[..., offset : offset + width]
        out[plan] = plan_sources_from_uniforms(plan, chunk, batch_shape, sites, C)
        offset += width
    return out


def draw_plan_sources(
    plan: ReconPlan,
    key: PRNGKeyArray,
    batch_shape: tuple[int, ...],
    sites: tuple[str, ...],
    C: SiteC,
) -> list[list[Forward]]:
    """The sources of one plan alone."""
    return draw_plans_sources((plan,), key, batch_shape, sites, C)[plan]


def live_sites(plan: ReconPlan, sites: tuple[str, ...], forward_index: int) -> tuple[str, ...]:
    """Sites on the decomposed path in forward `forward_index`; the rest take x @ W."""
    return (sites[forward_index],) if plan.routing == "each" else sites
