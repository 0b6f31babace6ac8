"""A site's component table: one row per component, sortable and filterable by input token in
the browser. Rows are embedded JSON (a few numbers and token ids each) rendered by
`assets/browse.js`, which draws a page of rows at a time, so 10^4 rows stay responsive."""

from __future__ import annotations

from typing import Any

from param_decomp.browse.layout import TABLE_ROOT, table_path
from param_decomp.browse.markup import finite, json_for_script, number, page, text
from param_decomp.browse.tables import Harvest

HEADERS = (
    ("component", "component"),
    ("firing", "firing count"),
    ("density", "density"),
    ("density_any", "density (CI > 0)"),
    ("mean_ci", "mean CI"),
    ("pmi", "top PMI"),
    ("effect", "effect (KL)"),
    ("dlogp", "ablation Δ log p"),
)


def table_rows(h: Harvest, site: str) -> list[list[Any]]:
    """[component, firing, density, density_any, mean_ci, top PMI, effect, Δ log p, count ids,
    PMI ids] per component; effect and Δ log p are those of `Harvest.ablation_row` (None when
    the component was not ablated)."""
    comp_cols, tok_cols = h.components.columns, h.input_tokens.columns
    rows = []
    for comp in h.site_components(site):
        key = (site, comp)
        (i,) = h.components.rows(key)
        by_count, by_pmi, top_pmi = [], [], None
        for j in h.input_tokens.rows(key):  # sorted by (by, rank)
            if tok_cols["by"][j] == "count":
                by_count.append(tok_cols["token"][j])
            else:
                by_pmi.append(tok_cols["token"][j])
                top_pmi = top_pmi if top_pmi is not None else finite(tok_cols["pmi"][j])
        effect = dlogp = None
        shown = h.ablation_row(key)
        if shown is not None and h.ablation is not None:
            effect = finite(h.ablation.columns["kl"][shown[1]], 9)
            dlogp = finite(h.ablation.columns["dlogp"][shown[1]], 9)
        rows.append(
            [
                comp,
                comp_cols["firing_count"][i],
                finite(comp_cols["density"][i], 9),
                finite(comp_cols["density_any"][i], 9),
                finite(comp_cols["mean_ci"][i], 9),
                top_pmi,
                effect,
                dlogp,
                by_count,
                by_pmi,
            ]
        )
    return rows


def _effect_note(h: Harvest) -> str:
    """What the effect columns mean, or how to fill them."""
    if h.ablation is None:
        return (
            "effect (KL) and ablation Δ log p are empty: run <code>param-decomp ablate "
            "RUN_DIR</code> after the harvest to fill them."
        )
    n = number(h.ablation_meta.get("contexts"))
    return (
        "effect (KL): the mean KL(before ‖ after) of the next-token distribution when this "
        "component is removed at the position where it fires, through every later layer; "
        f"ablation Δ log p: the mean change of the actual next token's log-probability (negative: "
        f"the component helped predict it). Over up to {n} of its reservoir samples (its top "
        "contexts when it has none)."
    )


def site_table_page(h: Harvest, site: str, slugs: dict[str, str]) -> str:
    """The full HTML of a site's table page (token pieces come from `assets/vocab.js`)."""
    data = {"site": site, "rows": table_rows(h, site)}
    info = h.summary.get("sites", {}).get(site, {})
    others = " ".join(
        f'<a href="{TABLE_ROOT}{table_path(slug)}">{text(s)}</a>'
        for s, slug in slugs.items()
        if s != site
    )
    heads = "".join(
        f'<th data-key="{key}"{" class=num" if key != "component" else ""}>'
        f'<button type="button">{label}</button></th>'
        for key, label in HEADERS
    )
    body = f"""<nav><a href="{TABLE_ROOT}index.html">overview</a> other sites: {others}</nav>
<h1 id="site-title" data-site="{text(site)}">{text(site)}</h1>
<p>C = {number(info.get("C"))}, alive {number(info.get("alive_count"))}, \
L0 {number(info.get("l0"))} (CI &gt; 0: {number(info.get("l0_any"))}). \
Click a column to sort; type a token to keep the components whose input tokens \
(by count or PMI) include it.</p>
<p class="note">{_effect_note(h)}</p>
<p><label>input token <input id="token-search" type="search" autocomplete="off"></label>
<label><input id="token-substring" type="checkbox"> match part of a token</label></p>
<p id="table-status"></p>
<table id="components"><thead><tr>{heads}<th>top input tokens</th></tr></thead>
<tbody id="component-rows"></tbody></table>
<p><button id="show-more" type="button" hidden>show more</button></p>
<script id="pd-table" type="application/json">{json_for_script(data)}</script>"""
    return page(f"{site}: components", body, TABLE_ROOT, scripts=True)
