"""Which target weights a decomposition covers and with how many components (SPEC S1.4).

`decomposition.sites` lists exact names or dotted patterns; they resolve against the target's
own site list and the result keeps the TARGET's order (its forward order), so two configs that
name the same sites in different orders build the same decomposition, draw the same sources and
checkpoint the same pytree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

from param_decomp.config.schema import Decomposition


class SiteError(ValueError):
    """A `decomposition.sites` / `tied_sites` entry that does not resolve; the message says which
    entry and what the target has."""


def pattern_matches(pattern: str, site: str) -> bool:
    """Segment-wise glob: `layers.*.mlp.*` matches `layers.0.mlp.up` but not
    `layers.0.attn.q`; each `*` stays inside one dot-separated segment."""
    parts, names = pattern.split("."), site.split(".")
    return len(parts) == len(names) and all(
        fnmatchcase(n, p) for p, n in zip(parts, names, strict=True)
    )


def resolve_sites(dec: Decomposition, target_sites: Sequence[str]) -> dict[str, int]:
    """{site: C} for every site a `sites` entry matches, in `target_sites` order.

    Every entry must match at least one site and no site may be matched by two entries (its C
    would be ambiguous); a tied site must be decomposed with the same C as its source."""
    owner: dict[str, str] = {}
    site_C: dict[str, int] = {}
    for pattern, C in dec.site_entries():
        hits = [s for s in target_sites if pattern_matches(pattern, s)]
        if not hits:
            raise SiteError(
                f"entry {pattern!r} matches no site of the target; it has {list(target_sites)}"
            )
        for s in hits:
            if s in owner:
                raise SiteError(
                    f"site {s!r} is matched by both {owner[s]!r} and {pattern!r}; "
                    "make the patterns disjoint so each site has one C"
                )
            owner[s], site_C[s] = pattern, C
    for tied, source in dec.tied_sites.items():
        for name in (tied, source):
            if name not in site_C:
                raise SiteError(
                    f"tied_sites entry {tied}: {source} names {name!r}, which is not a "
                    f"decomposed site; decomposed: {list(site_C)}"
                )
        if site_C[tied] != site_C[source]:
            raise SiteError(
                f"tied_sites entry {tied}: {source} ties sites of different C "
                f"({site_C[tied]} and {site_C[source]})"
            )
    return {s: site_C[s] for s in target_sites if s in site_C}


_LAYER_SITE = re.compile(r"^(layers\.\d+)\.")


def site_layers(sites: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{layer: its sites}, in site order (S14.9). A site `layers.<i>.<rest>` belongs to the
    layer `layers.<i>`; any other site (`linear1`, `hidden_layers.0`, ...) is a layer alone."""
    layers: dict[str, list[str]] = {}
    for site in sites:
        match = _LAYER_SITE.match(site)
        layers.setdefault(match.group(1) if match else site, []).append(site)
    return {layer: tuple(members) for layer, members in layers.items()}
