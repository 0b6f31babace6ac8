"""Mask sources and routing for reconstruction plans (S6), drawn from the step's key.

Sources are drawn for the GLOBAL batch from a counter-based key, so they are identical on any
mesh. The drawn pytree is an input of the objective, which lets the goldens inject their own.

Layout of a plan's sources: a list over mask samples; each sample is a list over forwards
(one forward for routing all/subset/ci, one per site for routing each); each forward is
{"mask_source": {site: (*b, C)}, "delta_source": {site: (*b,)}, "routed": {site: (*b,)} | None}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, PRNGKeyArray

Forward = dict[str, Any]

Routing = Literal["all", "each", "subset", "ci"]
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


def _source(key: PRNGKeyArray, kind: str, shape: tuple[int, ...]) -> Array:
    if kind == "binomial":
        return jax.random.bernoulli(key, 0.5, shape).astype(jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32)


def uniform_k_routing(
    key: PRNGKeyArray, batch_shape: tuple[int, ...], n_sites: int
) -> Bool[Array, "*b n_sites"]:
    """Per position: k ~ U{1..n_sites}, then a uniform k-subset of sites is routed (S6.3)."""
    k_key, perm_key = jax.random.split(key)
    k = jax.random.randint(k_key, batch_shape, 1, n_sites + 1)
    ranks = jnp.argsort(
        jnp.argsort(jax.random.uniform(perm_key, (*batch_shape, n_sites)), axis=-1), axis=-1
    )
    return ranks < k[..., None]


def draw_plan_sources(
    plan: ReconPlan, key: PRNGKeyArray, batch_shape: tuple[int, ...], sites: tuple[str, ...], C: int
) -> list[list[Forward]]:
    """Every source a plan's forwards consume; one key split per (sample, forward, site)."""
    n_forwards = len(sites) if plan.routing == "each" else 1
    samples = []
    for sample_key in jax.random.split(key, plan.n_mask_samples):
        forwards = []
        for fwd_key in jax.random.split(sample_key, n_forwards):
            site_keys = jax.random.split(fwd_key, 2 * len(sites) + 1)
            fwd: Forward = {"mask_source": {}, "delta_source": {}, "routed": None}
            for i, s in enumerate(sites):
                if plan.routing == "ci":
                    fwd["mask_source"][s] = jnp.zeros((*batch_shape, C), jnp.float32)
                    fwd["delta_source"][s] = jnp.zeros(batch_shape, jnp.float32)
                else:
                    fwd["mask_source"][s] = _source(
                        site_keys[2 * i], plan.source, (*batch_shape, C)
                    )
                    fwd["delta_source"][s] = jax.random.uniform(
                        site_keys[2 * i + 1], batch_shape, jnp.float32
                    )
            if plan.routing == "subset":
                routed = uniform_k_routing(site_keys[-1], batch_shape, len(sites))
                fwd["routed"] = {s: routed[..., i] for i, s in enumerate(sites)}
            forwards.append(fwd)
        samples.append(forwards)
    return samples


def live_sites(plan: ReconPlan, sites: tuple[str, ...], forward_index: int) -> tuple[str, ...]:
    """Sites on the decomposed path in forward `forward_index`; the rest take x @ W."""
    return (sites[forward_index],) if plan.routing == "each" else sites
