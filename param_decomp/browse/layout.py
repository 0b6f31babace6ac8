"""Where each page of the site lives, and the relative links between them.

    OUT/index.html                               overview
    OUT/assets/style.css, OUT/assets/browse.js   the only stylesheet and script
    OUT/sites/<slug>/index.html                  a site's component table
    OUT/sites/<slug>/components/<c>.html         one page per component

A slug is the site name with every character outside [A-Za-z0-9._-] replaced, made unique
(case-insensitively, for file systems that fold case).
"""

from __future__ import annotations

import re

SITES = "sites"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def site_slugs(sites: list[str]) -> dict[str, str]:
    """A distinct, file-name-safe folder name per site."""
    slugs: dict[str, str] = {}
    taken: set[str] = set()
    for site in sites:
        base = _UNSAFE.sub("_", site).lstrip(".") or "site"
        slug, n = base, 2
        while slug.lower() in taken:
            slug, n = f"{base}-{n}", n + 1
        taken.add(slug.lower())
        slugs[site] = slug
    return slugs


def table_path(slug: str) -> str:
    """A site's table page, relative to the site root."""
    return f"{SITES}/{slug}/index.html"


def component_path(slug: str, component: int) -> str:
    """A component's page, relative to the site root."""
    return f"{SITES}/{slug}/components/{component}.html"


TABLE_ROOT = "../../"  # from a table page back to the site root
COMPONENT_ROOT = "../../../"  # from a component page back to the site root
