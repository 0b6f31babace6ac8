"""Forwards of the target with some sites replaced by their masked components (S2, S6, S9.4).

Every mask-independent product is computed once per step (S9.4): the clean forward records each
site's input x and output x @ W (`CleanRecord`), the objective computes x @ V once per site on
that input (`inner_acts`), and a masked forward reuses both wherever its site input IS the clean
one. A site's input is the clean one as long as no live site has run before it in the forward,
so until then the masked forward hands back the recorded outputs: the clean upstream layers are
never recomputed (their code is dead and XLA drops it), and each site's masked forward starts
from its recorded input and runs only what lies downstream of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
from jaxtyping import Array, Float

from param_decomp.decomposition.components import (
    component_acts,
    masked_product_sum,
    stochastic_mask,
)
from param_decomp.targets.base import SiteFn, site_product


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class CleanRecord:
    """What the clean forward saw at every site: its input x and its output x @ W."""

    inputs: dict[str, Array]
    outputs: dict[str, Array]


def recording_site_fn(inputs: dict[str, Array], outputs: dict[str, Array]) -> SiteFn:
    """The clean path, remembering every site's input and output."""

    def site_fn(name: str, x: Array, W: Array) -> Array:
        if name in inputs:
            raise ValueError(
                f"site {name!r} was called twice in one forward; site names must be "
                "unique within a target's forward"
            )
        out = site_product(x, W)
        inputs[name], outputs[name] = x, out
        return out

    return site_fn


def clean_forward(target: Any, x: Array, sites: tuple[str, ...]) -> tuple[Array, CleanRecord]:
    """The target's own output on x and what every site saw and returned (all of them, so a
    masked forward can skip any clean site upstream of its first live one)."""
    inputs: dict[str, Array] = {}
    outputs: dict[str, Array] = {}
    out = target(x, recording_site_fn(inputs, outputs))
    missing = [s for s in sites if s not in inputs]
    if missing:
        raise ValueError(f"sites {missing} are not sites of this target; it has {sorted(inputs)}")
    return out, CleanRecord(inputs, outputs)


def inner_acts(
    record: CleanRecord, VU: dict[str, tuple[Array, Array]]
) -> dict[str, Float[Array, "*b C"]]:
    """x @ V on each site's clean input: the one product the CI function and every masked
    forward whose site input is clean share (S9.4)."""
    return {s: component_acts(record.inputs[s], VU[s][0]) for s in VU}


def masked_site_fn(
    live: tuple[str, ...],
    VU: dict[str, tuple[Array, Array]],
    ci_lower: dict[str, Array],
    forward: dict[str, Any],
    use_delta: bool,
    record: CleanRecord,
    clean_acts: dict[str, Array],
) -> SiteFn:
    """Live sites run ((x V) * (mask - delta)) U + delta * (x W); others, and positions not
    routed to a live site, run x @ W (S2.2, S2.3). Until the first live site has run, the
    forward is the clean one: sites read the recorded products instead of recomputing them."""
    upstream_clean = [True]

    def site_fn(name: str, x: Array, W: Array) -> Array:
        clean = upstream_clean[0] and name in record.outputs
        if name not in live:
            return record.outputs[name] if clean else site_product(x, W)
        upstream_clean[0] = False
        V, U = VU[name]
        acts = clean_acts[name] if clean else site_product(x, V)
        needs_xw = use_delta or forward["routed"] is not None
        xw = (record.outputs[name] if clean else site_product(x, W)) if needs_xw else None
        mask = stochastic_mask(ci_lower[name], forward["mask_source"][name])
        delta = forward["delta_source"][name] if use_delta else None
        routed = forward["routed"][name] if forward["routed"] is not None else None
        return masked_product_sum(acts, U, mask, xw, delta, routed)

    return site_fn
