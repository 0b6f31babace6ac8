"""End to end: `param-decomp harvest` on a small LM run, then `param-decomp browse` on its folder.
Every component of every site gets a page whose embedded contexts are the harvested ones, and
whose partner links are the harvested co-activation list (the browse tests check the pages on a
synthetic harvest in depth; this checks the two commands agree on the real files)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli

import param_decomp.harvest as harvest
from param_decomp.browse.layout import component_path, site_slugs, table_path

OPTIONS = ("--tokens=512", "--top-k=3", "--context=2", "--reservoir=2", "--coact-top=3")


def _embedded(page: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page)
    assert match, element_id
    return json.loads(match.group(1))


def _by_component(table: object) -> dict[tuple[str, int], list[dict]]:
    rows: dict[tuple[str, int], list[dict]] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["rank"]):
        rows.setdefault((row["site"], row["component"]), []).append(row)
    return rows


@pytest.mark.runs_long(seconds=15)
def test_browse_shows_exactly_what_harvest_wrote(harvest_run: Path, tmp_path: Path) -> None:
    # a private copy of the run: the statistics tests' harvests in harvest_run stay untouched
    run = tmp_path / harvest_run.name
    shutil.copytree(harvest_run, run, ignore=shutil.ignore_patterns("harvest", "browse"))
    runs_dir = str(harvest_run.parent)  # where the target is cached
    out = run_cli("harvest", str(run), *OPTIONS, "--runs-dir", runs_dir, "--no-progress")
    assert out.returncode == 0, out.stderr
    h = harvest.load(run)
    site_dir = tmp_path / "site"
    out = run_cli("browse", str(run), "--out", str(site_dir))
    assert out.returncode == 0, out.stderr
    sites = list(h.summary["sites"])
    slugs = site_slugs(sites)
    top = _by_component(h.top_contexts)
    partners = _by_component(h.coactivation)
    assert top and partners, "the harvest fired nothing: the comparison below would be vacuous"
    for site in sites:
        assert (site_dir / table_path(slugs[site])).is_file()
        for comp in range(h.summary["sites"][site]["C"]):
            page = (site_dir / component_path(slugs[site], comp)).read_text()
            shown = _embedded(page, "pd-contexts")["top"]
            truth = top.get((site, comp), [])
            assert [c["t"] for c in shown] == [r["tokens"] for r in truth], (site, comp)
            assert [c["c"] for c in shown] == [
                [round(v * 1000) for v in r["ci_values"]] for r in truth
            ], (site, comp)
            links = re.findall(r'<a class="partner" href="([^"]+)"', page)
            assert links == [
                "../../../" + component_path(slugs[p["partner_site"]], p["partner_component"])
                for p in partners.get((site, comp), [])
            ], (site, comp)
