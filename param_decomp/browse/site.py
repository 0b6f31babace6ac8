"""`param-decomp browse`: write the whole static site for one harvest step.

The output folder gets a marker file; an existing folder without it is refused, so the
command never clears a folder it did not write. Rewriting clears the old pages first, so a
component that no longer exists leaves no stale page behind.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from param_decomp.browse.assets import write_assets
from param_decomp.browse.component_page import component_page, milli_ci
from param_decomp.browse.layout import SITES, component_path, site_slugs, table_path
from param_decomp.browse.markup import ASSETS
from param_decomp.browse.overview import overview_page
from param_decomp.browse.site_table import site_table_page
from param_decomp.browse.tables import BrowseError, Harvest, load_harvest
from param_decomp.eval.token_text import visible_html_text

MARKER = ".param-decomp-browse"


@dataclass(frozen=True)
class WrittenSite:
    """What `write_site` wrote: the folder, its front page, the page count and seconds."""

    out: Path
    index: Path
    harvest: Path
    component_pages: int
    seconds: float


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BrowseError(f"{out} exists and was not written by `param-decomp browse`: pick --out")
    for name in (SITES, ASSETS):
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by param-decomp browse\n", encoding="utf-8")


def _write(path: Path, content: str) -> None:
    path.write_text(content, encoding="utf-8")


def write_harvest_site(h: Harvest, out: Path, run_name: str) -> int:
    """Write every page for a loaded harvest; returns the number of component pages."""
    _prepare(out)
    shown = {token: visible_html_text(piece) for token, piece in h.vocab.items()}
    write_assets(out, shown)
    slugs = site_slugs(h.sites)
    milli = {
        name: milli_ci(g.contexts.ci if g.contexts is not None else np.zeros(0))
        for name, g in (("top", h.top_contexts), ("reservoir", h.reservoir))
    }
    _write(out / "index.html", overview_page(h, slugs, run_name))
    pages = 0
    for site in h.sites:
        slug = slugs[site]
        (out / component_path(slug, 0)).parent.mkdir(parents=True, exist_ok=True)
        _write(out / table_path(slug), site_table_page(h, site, slugs))
        comps = h.site_components(site)
        for n, comp in enumerate(comps):
            neighbours = (
                comps[n - 1] if n > 0 else None,
                comps[n + 1] if n + 1 < len(comps) else None,
            )
            html = component_page(h, (site, comp), slugs, shown, milli, neighbours)
            _write(out / component_path(slug, comp), html)
            pages += 1
    return pages


def write_site(run_dir: Path, out: Path | None = None, step: int | None = None) -> WrittenSite:
    """Read `RUN_DIR/harvest/step_N` (newest N unless `step`) and write the site to `out`
    (default RUN_DIR/browse)."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "browse"
    h = load_harvest(run_dir, step)
    pages = write_harvest_site(h, out, run_dir.resolve().name)
    return WrittenSite(out, out / "index.html", h.path, pages, time.perf_counter() - start)
