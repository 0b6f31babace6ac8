"""`param-decomp browse` without a browser (issue 21, scope 3): reading the harvest folder,
escaping of hostile token text, per-component pages holding only their own data, every local
link resolving, the CLI, and the time to write a 10^4-component site."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from browse_fixture import HOSTILE, NO_RESIDUAL_NOTE, SyntheticHarvest, write_synthetic_harvest
from cli_runner import run_cli

from param_decomp.browse.layout import component_path, site_slugs
from param_decomp.browse.site import write_site
from param_decomp.browse.tables import BrowseError, load_harvest
from param_decomp.eval.token_text import visible_html_text

SITES = {
    "layers.0.mlp.up": (12, False),
    "layers.0.mlp.down": (10, True),
    "layers.1.attn<o>": (8, True),
}
_REF = re.compile(r'\b(?:href|src)="([^"]*)"')


@pytest.fixture(scope="module")
def harvest(tmp_path_factory: pytest.TempPathFactory) -> SyntheticHarvest:
    run = tmp_path_factory.mktemp("browse_pages") / "run"
    return write_synthetic_harvest(run, SITES)


@pytest.fixture(scope="module")
def site(harvest: SyntheticHarvest) -> Path:
    return write_site(harvest.run_dir).out


def embedded(page: str, element_id: str) -> dict:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', page)
    assert match, element_id
    return json.loads(match.group(1))


def test_reader_groups_rows_by_component_in_rank_order(harvest: SyntheticHarvest) -> None:
    h = load_harvest(harvest.run_dir)
    assert h.sites == list(SITES) and h.vocab == harvest.vocab
    for site, comp in [("layers.0.mlp.down", 4), ("layers.1.attn<o>", 0)]:
        truth = harvest.rows("top_contexts", site, comp)
        got = list(h.top_contexts.rows((site, comp)))
        assert [h.top_contexts.columns["rank"][i] for i in got] == [r["rank"] for r in truth]
        for i, row in zip(got, truth, strict=True):
            ids, ci = h.top_contexts.contexts.row(i)
            assert ids.tolist() == row["tokens"]
            assert ci.tolist() == pytest.approx(row["ci_values"])
    assert list(h.coactivation.rows(("layers.0.mlp.up", 3))) == []  # a dead component


def test_newest_step_unless_named_and_clear_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(BrowseError, match="no step_N folder"):
        load_harvest(run)
    write_synthetic_harvest(run, {"a": (3, True)}, step=20)
    write_synthetic_harvest(run, {"b": (4, True)}, step=300)  # newest, numerically
    assert load_harvest(run).sites == ["b"] and load_harvest(run, step=20).sites == ["a"]
    with pytest.raises(BrowseError, match=r"no step_7 \(harvested steps: \[20, 300\]\)"):
        load_harvest(run, step=7)
    step = run / "harvest" / "step_300"
    pq.write_table(
        pq.read_table(step / "coactivation.parquet").drop(["jaccard"]), step / "c.parquet"
    )
    (step / "c.parquet").replace(step / "coactivation.parquet")
    with pytest.raises(BrowseError, match=r"coactivation.parquet lacks the columns \['jaccard'\]"):
        load_harvest(run)
    (step / "input_tokens.parquet").write_bytes(b"not parquet")
    with pytest.raises(BrowseError, match="input_tokens.parquet cannot be read"):
        load_harvest(run)
    (step / "reservoir.parquet").unlink()
    with pytest.raises(BrowseError, match="reservoir.parquet is missing"):
        load_harvest(run)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BrowseError, match="not written by"):
        write_site(run, foreign, step=20)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_slugs_are_safe_and_distinct() -> None:
    slugs = site_slugs(["layers.0.mlp", "a/b<c>", "a_b_c_", "..x", "A_B_C_"])
    assert slugs == {
        "layers.0.mlp": "layers.0.mlp",
        "a/b<c>": "a_b_c_",
        "a_b_c_": "a_b_c_-2",
        "..x": "x",
        "A_B_C_": "A_B_C_-3",
    }


def test_token_text_is_escaped_everywhere(site: Path, harvest: SyntheticHarvest) -> None:
    """Markup in a token or a site name is text: no page holds it raw; the embedded JSON
    gives back exactly the visible piece."""
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 1 + len(SITES) + sum(c for c, _ in SITES.values())
    for path in pages:
        page = path.read_text(encoding="utf-8")
        assert "alert(1)</script>" not in page and "<b>" not in page and "attn<o>" not in page
        assert page.count("<script") <= 3 and "</script><" not in page.replace("</script>\n", "")
    vocab_js = (site / "assets" / "vocab.js").read_text(encoding="utf-8")
    assert "<" not in vocab_js  # written as \\u003c, though it is a script file, not a page
    assert vocab_js.startswith("window.PD_VOCAB = ") and vocab_js.endswith(";\n")
    vocab = json.loads(vocab_js.removeprefix("window.PD_VOCAB = ").removesuffix(";\n"))
    assert vocab == {str(i): visible_html_text(piece) for i, piece in harvest.vocab.items()}
    assert vocab["0"] == HOSTILE[0] and vocab["4"] == "↵" and vocab["5"] == "··"
    slug = site_slugs(list(SITES))["layers.0.mlp.down"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in "".join(
        p.read_text() for p in (site / "sites" / slug / "components").glob("*.html")
    )  # the static tables of input/output tokens escape it
    overview = (site / "index.html").read_text()
    assert "layers.1.attn&lt;o&gt;" in overview and NO_RESIDUAL_NOTE in overview


def test_component_pages_hold_only_their_own_data(site: Path, harvest: SyntheticHarvest) -> None:
    slugs = site_slugs(list(SITES))
    for site_name, comp in [
        ("layers.0.mlp.down", 1),
        ("layers.0.mlp.up", 0),
        ("layers.0.mlp.up", 3),
    ]:
        page = (site / component_path(slugs[site_name], comp)).read_text()
        data = embedded(page, "pd-contexts")
        for key, table in (("top", "top_contexts"), ("reservoir", "reservoir")):
            truth = harvest.rows(table, site_name, comp)
            assert [c["t"] for c in data[key]] == [r["tokens"] for r in truth]
            assert [c["k"] for c in data[key]] == [r["center"] for r in truth]
            for ctx, row in zip(data[key], truth, strict=True):
                assert ctx["c"] == [round(v * 1000) for v in row["ci_values"]]
        assert set(data) == {"top", "reservoir"}  # token pieces live in the shared vocab.js
        partners = harvest.rows("coactivation", site_name, comp)
        links = re.findall(r'<a class="partner" href="([^"]+)"', page)
        assert links == [
            "../../../" + component_path(slugs[p["partner_site"]], p["partner_component"])
            for p in partners
        ]
    dead = (site / component_path(slugs["layers.0.mlp.up"], 3)).read_text()
    assert NO_RESIDUAL_NOTE in dead and dead.count("none harvested") >= 2
    assert (site / "index.html").stat().st_size < 20_000  # the overview holds no component data


def test_every_local_reference_resolves_and_none_leaves_the_folder(site: Path) -> None:
    """Every href/src of every page (and the table rows the script links to) is a relative
    path to a file the command wrote: no URL, no absolute path, nothing outside OUT."""
    for path in site.rglob("*.html"):
        page = path.read_text(encoding="utf-8")
        assert not re.search(r"https?:|//|@import|url\(", page.replace("<!DOCTYPE html>", ""))
        refs = _REF.findall(page)
        if path.name == "index.html" and path.parent.name != site.name:
            refs += [f"components/{row[0]}.html" for row in embedded(page, "pd-table")["rows"]]
        for ref in refs:
            target = (path.parent / ref).resolve()
            assert target.is_file() and target.is_relative_to(site.resolve()), (path, ref)
    for asset in (site / "assets" / "browse.js", site / "assets" / "style.css"):
        assert not re.search(r"https?:|fetch\(|XMLHttpRequest|import\(", asset.read_text())


def test_cli_writes_the_site_and_reports_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = run_cli("browse", str(run))
    assert out.returncode == 2 and "no step_N folder" in out.stderr
    write_synthetic_harvest(run, {"s": (5, True)})
    out = run_cli("browse", str(run), "--out", str(tmp_path / "site"), "--step", "100")
    assert out.returncode == 0, out.stderr
    assert "5 component pages" in out.stdout and (tmp_path / "site" / "index.html").is_file()
    assert run_cli("browse", str(run)).returncode == 0 and (run / "browse" / "index.html").is_file()
    assert run_cli("browse", str(run)).returncode == 0  # rewriting its own folder is fine


def test_ten_thousand_components_are_written_quickly(tmp_path: Path) -> None:
    """10^4 components over two sites, one small page each; prints the time for the report."""
    try:
        start = time.perf_counter()
        harvest = write_synthetic_harvest(
            tmp_path / "run", {"layers.0.mlp.up": (6000, False), "layers.0.mlp.down": (4000, True)}
        )
        made = time.perf_counter() - start
        written = write_site(harvest.run_dir)
        pages = list((written.out / "sites").rglob("components/*.html"))
        sizes = sorted(p.stat().st_size for p in pages)
        tables = [
            (written.out / "sites" / s / "index.html").stat().st_size
            for s in site_slugs(harvest.sites)
        ]
        median, largest = sizes[len(sizes) // 2] / 1e3, sizes[-1] / 1e3
        print(
            f"\n10^4 components: fixture {made:.2f} s, site {written.seconds:.2f} s, component "
            f"pages {median:.1f} kB median, {largest:.1f} kB largest; "
            f"tables {max(tables) / 1e3:.0f} kB"
        )
        assert written.component_pages == 10_000 and len(pages) == 10_000
        assert sizes[-1] < 16_000
        assert written.seconds < 60
    finally:  # 2 x 10^4 files: later pytest sessions would spend seconds removing them
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_empty_tables_give_pages_that_say_so(tmp_path: Path) -> None:
    """A harvest with no reservoir, no output tokens and no co-activation rows at all (zero-row
    tables, not only a component without rows) still gives every page."""
    h = write_synthetic_harvest(tmp_path / "run", {"s": (4, True)}, n_res=0, n_out=0, n_co=0)
    assert all(len(h.tables[n]) == 0 for n in ("reservoir", "output_tokens", "coactivation"))
    out = write_site(h.run_dir).out
    page = (out / component_path("s", 0)).read_text()
    assert embedded(page, "pd-contexts")["reservoir"] == []
    assert 'class="empty coactivation">none harvested' in page
    assert 'class="note output-note">none harvested' in page


def test_effect_column_and_component_ablation_are_the_tables(
    site: Path, harvest: SyntheticHarvest
) -> None:
    """The table's effect and Δ log p are the reservoir sample's KL and dlogp (the top
    contexts' where a component has no reservoir sample; none for a dead one); the component
    page lists each sample's numbers and the shown sample's tokens, beside the direct path."""
    slugs = site_slugs(list(SITES))
    for site_name in SITES:
        page = (site / "sites" / slugs[site_name] / "index.html").read_text()
        assert 'data-key="effect"' in page and "effect (KL)" in page
        rows = {r[0]: r for r in embedded(page, "pd-table")["rows"]}
        fallback = 0
        for comp, row in rows.items():
            ablated = {r["sample"]: r for r in harvest.rows("ablation", site_name, comp)}
            shown = ablated.get("reservoir") or ablated.get("top")
            if shown is None:
                assert row[6] is None and row[7] is None
                continue
            fallback += "reservoir" not in ablated
            assert row[6] == pytest.approx(shown["kl"], abs=1e-9)
            assert row[7] == (None if shown["dlogp"] is None else pytest.approx(shown["dlogp"]))
        assert fallback > 0 or site_name != "layers.0.mlp.up"
    comp_page = (site / component_path(slugs["layers.0.mlp.down"], 1)).read_text()
    direct, ablation = comp_page.split('id="ablation-effect"')
    assert "output-promote" in direct
    for row in harvest.rows("ablation", "layers.0.mlp.down", 1):
        assert f"<td>{row['sample']}</td>" in ablation
        assert f'data-ablation="kl">{row["kl"]:.4g}<' in ablation
    tokens = harvest.rows("ablation_tokens", "layers.0.mlp.down", 1)
    raised = [t["token"] for t in tokens if t["sample"] == "reservoir"]
    chips = re.findall(r'data-token="(\d+)"', ablation)
    assert [int(c) for c in chips] == raised  # promoted then suppressed, in rank order


def test_a_harvest_without_ablation_says_how_to_fill_the_column(tmp_path: Path) -> None:
    h = write_synthetic_harvest(tmp_path / "run", {"s": (4, True)}, ablation=False)
    out = write_site(h.run_dir).out
    table = (out / "sites" / "s" / "index.html").read_text()
    assert "param-decomp ablate" in table
    assert all(r[6] is None for r in embedded(table, "pd-table")["rows"])
    assert (
        "not ablated: run `param-decomp ablate RUN_DIR`"
        in (out / component_path("s", 0)).read_text()
    )
