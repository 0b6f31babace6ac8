"""Adversarial mask sources (SPEC S6A): PGD chooses the sources that MAXIMISE reconstruction.

The mask keeps the form of S2.1, `mask = ci_lower + (1 - ci_lower) * s`, but the source
`s ∈ [0, 1]` is picked by projected gradient ascent on the term's output distance instead of
drawn at random. Per site the adversary holds `C` mask sources plus one delta source when the
delta channel is on (`width = C + delta`), either one vector shared by every position
(`sharing = batch`, shape `(width,)`) or one per position (`sharing = position`, shape
`(*batch, width)`). Routing `all` / `subset` runs one forward with every site live (subset:
positions routed as in S6.3); `each` runs an independent adversary per site, in a forward where
only that site is live (as S6.2), and the term averages over sites.

A fresh adversary (`pgd_recon`) starts each step from `init` (uniform or ones) and takes
`n_steps` sign-gradient ascents with the decomposition's params frozen (stop-gradient); the
term is the loss at the final, stop-gradient sources. A persistent adversary
(`persistent_pgd_recon`) keeps its sources and their Adam moments in the train state: per step
`n_steps` warm-up sign ascents, then the loss at the warmed sources, whose gradient w.r.t. the
sources comes out of the step's single backward (straight-through the warm-up) and drives one
Adam ascent step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

from param_decomp.decomposition.sources import Forward, SiteC, c_of, uniform_k_routing

AdversaryRouting = Literal["all", "subset", "each"]
AdversaryInit = Literal["random", "ones"]
SourceSharing = Literal["batch", "position"]
Sources = dict[str, Array]

# fold_in salts: the adversary's draws never overlap the plans' single uniform draw (S6.5)
INIT_SALT = 0x5EED_0001
ROUTE_SALT = 0x5EED_0002
STATE_SALT = 0x5EED_0003


@dataclass(frozen=True)
class AdversarySpec:
    """What one adversarial term asks the objective to run (hashable: the objective's key)."""

    routing: AdversaryRouting = "all"
    delta: bool = True
    distance: str = "mse"
    n_steps: int = 1
    step_size: float = 0.1
    init: AdversaryInit = "random"
    sharing: SourceSharing = "batch"
    persistent: bool = False
    lr: float = 0.01
    b1: float = 0.9
    b2: float = 0.999


def source_shape(spec: AdversarySpec, batch_shape: tuple[int, ...], C: int) -> tuple[int, ...]:
    """One site's sources: C mask sources (+ a delta source), shared or per position."""
    width = C + (1 if spec.delta else 0)
    return (width,) if spec.sharing == "batch" else (*batch_shape, width)


def initial_sources(
    spec: AdversarySpec,
    key: PRNGKeyArray,
    batch_shape: tuple[int, ...],
    sites: tuple[str, ...],
    C: SiteC,
) -> Sources:
    """`init` sources: ones, or U(0, 1) from one draw with the sites on the second-to-last
    axis, as wide as the widest site (so a position's row depends only on the key and the
    position, as in S6.5); a site with fewer components takes the first of its row."""
    shapes = {s: source_shape(spec, batch_shape, c_of(C, s)) for s in sites}
    if spec.init == "ones":
        return {s: jnp.ones(shape, jnp.float32) for s, shape in shapes.items()}
    widest = max(shape[-1] for shape in shapes.values())
    lead = next(iter(shapes.values()))[:-1]
    u = jax.random.uniform(key, (*lead, len(sites), widest), jnp.float32)
    return {s: u[..., i, : shapes[s][-1]] for i, s in enumerate(sites)}


def draw_adversary(
    spec: AdversarySpec,
    key: PRNGKeyArray,
    batch_shape: tuple[int, ...],
    sites: tuple[str, ...],
    C: SiteC,
) -> dict[str, Any]:
    """The random part of an adversarial term for one step: initial sources and, for subset
    routing, the per-position routed sites (S6.3), fixed during the ascent."""
    init = initial_sources(spec, jax.random.fold_in(key, INIT_SALT), batch_shape, sites, C)
    routed = None
    if spec.routing == "subset":
        u = jax.random.uniform(jax.random.fold_in(key, ROUTE_SALT), (*batch_shape, len(sites) + 1))
        r = uniform_k_routing(u, len(sites))
        routed = {s: r[..., i] for i, s in enumerate(sites)}
    return {"init": init, "routed": routed}


def adversary_forward(
    spec: AdversarySpec,
    sources: Sources,
    routed: dict[str, Array] | None,
    batch_shape: tuple[int, ...],
) -> Forward:
    """The sources as one masked forward's `mask_source` / `delta_source` (every site live);
    a site's last source is its delta source when the delta channel is on."""
    mask, delta = {}, {}
    for s, src in sources.items():
        full = jnp.broadcast_to(src, (*batch_shape, src.shape[-1]))
        C = src.shape[-1] - (1 if spec.delta else 0)
        mask[s] = full[..., :C]
        delta[s] = full[..., C] if spec.delta else jnp.zeros(batch_shape, jnp.float32)
    return {"mask_source": mask, "delta_source": delta, "routed": routed}


def live_groups(spec: AdversarySpec, sites: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The live sites of each adversarial forward: one per site for `each`, else all at once."""
    return [(s,) for s in sites] if spec.routing == "each" else [sites]


def sign_ascent(
    loss: Callable[[Sources], Array], sources: Sources, n_steps: int, step_size: float
) -> Sources:
    """`n_steps` projected sign-gradient ascents: s <- clip(s + step_size * sign(dL/ds), 0, 1).

    Unrolled in Python: each ascent is exactly one masked forward and one backward w.r.t. the
    sources (S6A.4)."""
    for _ in range(n_steps):
        grad = jax.grad(loss)(sources)
        sources = jax.tree.map(
            lambda s, g: jnp.clip(s + step_size * jnp.sign(g), 0.0, 1.0), sources, grad
        )
    return sources


def adversary_optimizer(spec: AdversarySpec) -> optax.GradientTransformation:
    """Adam on the persistent sources (fed the NEGATED gradient: it ascends)."""
    return optax.adam(spec.lr, b1=spec.b1, b2=spec.b2)


def init_adversary_state(
    spec: AdversarySpec | None, key: PRNGKeyArray, sites: tuple[str, ...], C: SiteC
) -> dict[str, Any] | None:
    """The persistent adversary's train state `{sources, opt_state}`; None without one."""
    if spec is None:
        return None
    sources = initial_sources(spec, jax.random.fold_in(key, STATE_SALT), (), sites, C)
    return {"sources": sources, "opt_state": adversary_optimizer(spec).init(sources)}


def adversary_update(
    spec: AdversarySpec, state: dict[str, Any], warmed: Sources, grad: Sources
) -> dict[str, Any]:
    """One Adam ascent step from the warmed sources on the step's own gradient, then clamp."""
    ascent = jax.tree.map(jnp.negative, grad)
    updates, opt_state = adversary_optimizer(spec).update(ascent, state["opt_state"])
    sources = jax.tree.map(lambda s, u: jnp.clip(s + u, 0.0, 1.0), warmed, updates)
    return {"sources": sources, "opt_state": opt_state}
