"""One component's page: its statistics and tables as static HTML, its contexts as embedded
JSON that `assets/browse.js` renders (token ids and CI in thousandths; the token pieces come
from the shared `assets/vocab.js`), which keeps a page a few tens of kB even with 20 + 20
contexts of ±16 tokens."""

from __future__ import annotations

from typing import Any

import numpy as np

from param_decomp.browse.layout import COMPONENT_ROOT, component_path, table_path
from param_decomp.browse.markup import finite, json_for_script, number, page, text
from param_decomp.browse.tables import Grouped, Harvest, Key


def milli_ci(ci: np.ndarray) -> np.ndarray:
    """CI values as integer thousandths, the precision a background colour can show."""
    return np.rint(np.nan_to_num(ci, nan=0.0, posinf=1.0, neginf=0.0) * 1000).astype(np.int64)


def contexts_json(table: Grouped, key: Key, milli: np.ndarray) -> list[dict]:
    """The component's contexts in rank order. Its rows are adjacent, so their tokens are one
    slice of the flat arrays: one conversion to Python per component, not per context."""
    rows = table.rows(key)
    if not rows:
        return []
    assert table.contexts is not None
    cols, offsets = table.columns, table.contexts.offsets
    base = offsets[rows.start]
    ids = table.contexts.ids[base : offsets[rows.stop]].tolist()
    ci = milli[base : offsets[rows.stop]].tolist()
    out = []
    for i in rows:
        lo, hi = offsets[i] - base, offsets[i + 1] - base
        out.append(
            {
                "t": ids[lo:hi],
                "c": ci[lo:hi],
                "k": cols["center"][i],
                "s": cols["sequence"][i],
                "p": cols["position"][i],
                "m": finite(cols["ci"][i], 4),
            }
        )
    return out


def _token_cell(shown: dict[int, str], token: int) -> str:
    piece = shown.get(token, f"⟨{token}⟩")
    return f'<td><span class="chip" data-token="{token}">{text(piece)}</span></td>'


def _table(head: list[str], rows: list[str], empty: str, cls: str) -> str:
    if not rows:
        return f'<p class="empty {cls}">{text(empty)}</p>'
    ths = "".join(f'<th class="num">{h}</th>' if h != "token" else "<th>token</th>" for h in head)
    return (
        f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _input_tokens(h: Harvest, key: Key, shown: dict[int, str]) -> str:
    t, cols = h.input_tokens, h.input_tokens.columns
    parts = []
    for by, title in (("count", "by count"), ("pmi", "by PMI with firing")):
        rows = [
            f"<tr>{_token_cell(shown, cols['token'][i])}"
            f'<td class="num">{number(cols["count"][i])}</td>'
            f'<td class="num">{number(cols["pmi"][i])}</td></tr>'
            for i in t.rows(key)
            if cols["by"][i] == by
        ]
        table = _table(["token", "count", "PMI"], rows, "none harvested", f"input-{by}")
        parts.append(f"<div><h3>{title}</h3>{table}</div>")
    return f'<div class="columns">{"".join(parts)}</div>'


def _output_tokens(h: Harvest, key: Key, shown: dict[int, str]) -> str:
    t, cols = h.output_tokens, h.output_tokens.columns
    note = h.summary.get("sites", {}).get(key[0], {}).get("output_tokens_note") or ""
    if not t.rows(key):
        return f'<p class="note output-note">{text(note or "none harvested")}</p>'
    head = f'<p class="note output-note">{text(note)}</p>' if note else ""
    parts = []
    for direction in ("promote", "suppress"):
        rows = [
            f"<tr>{_token_cell(shown, cols['token'][i])}"
            f'<td class="num">{number(cols["value"][i], 4)}</td></tr>'
            for i in t.rows(key)
            if cols["direction"][i] == direction
        ]
        table = _table(["token", "value"], rows, "none", f"output-{direction}")
        parts.append(f"<div><h3>{direction}s</h3>{table}</div>")
    return f'{head}<div class="columns">{"".join(parts)}</div>'


def _ablation(h: Harvest, key: Key, shown: dict[int, str]) -> str:
    """The removal's effect per sample, and the tokens it moves most in the sample shown in the
    site table (`Harvest.ablation_row`)."""
    picked = h.ablation_row(key)
    if h.ablation is None or h.ablation_tokens is None or picked is None:
        why = "not ablated: run `param-decomp ablate RUN_DIR`" if h.ablation is None else "none"
        return f'<p class="empty ablation">{text(why)}</p>'
    cols = h.ablation.columns
    names = ("contexts", "next_contexts", "dlogp", "kl")
    head = "<th>sample</th>" + "".join(f'<th class="num">{n}</th>' for n in names)
    body = "".join(
        f"<tr><td>{text(cols['sample'][i])}</td>"
        + "".join(
            f'<td class="num" data-ablation="{n}">{number(cols[n][i], 4)}</td>' for n in names
        )
        + "</tr>"
        for i in h.ablation.rows(key)
    )
    t, tcols = h.ablation_tokens, h.ablation_tokens.columns
    parts = []
    for direction, title in (
        ("promoted", "removing it raises"),
        ("suppressed", "removing it lowers"),
    ):
        rows = [
            f"<tr>{_token_cell(shown, tcols['token'][i])}"
            f'<td class="num">{number(tcols["value"][i], 4)}</td></tr>'
            for i in t.rows(key)
            if tcols["sample"][i] == picked[0] and tcols["direction"][i] == direction
        ]
        table = _table(["token", "Δ log p"], rows, "none", f"ablation-{direction}")
        parts.append(f"<div><h3>{title} ({text(picked[0])})</h3>{table}</div>")
    return (
        f'<table class="ablation"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f'<div class="columns">{"".join(parts)}</div>'
    )


def _coactivation(h: Harvest, key: Key, slugs: dict[str, str]) -> str:
    t, cols = h.coactivation, h.coactivation.columns
    rows = []
    for i in t.rows(key):
        site, comp = cols["partner_site"][i], cols["partner_component"][i]
        label = f"{text(site)} #{comp}"
        partner = (
            f'<a class="partner" href="{COMPONENT_ROOT}{component_path(slugs[site], comp)}">'
            f"{label}</a>"
            if site in slugs
            else label
        )
        stats = "".join(
            f'<td class="num">{number(cols[name][i])}</td>'
            for name in ("count", "precision", "recall", "jaccard")
        )
        rows.append(f'<tr><td class="num">{cols["rank"][i]}</td><td>{partner}</td>{stats}</tr>')
    head = '<th class="num">rank</th><th>partner</th>' + "".join(
        f'<th class="num">{n}</th>' for n in ("count", "precision", "recall", "jaccard")
    )
    if not rows:
        return '<p class="empty coactivation">none harvested</p>'
    return (
        f'<table class="coactivation"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _stats(h: Harvest, key: Key) -> str:
    cols = h.components.columns
    (i,) = h.components.rows(key)
    names = ("firing_count", "firing_count_any", "density", "density_any", "mean_ci")
    rows = "".join(
        f'<tr><td>{name}</td><td class="num" data-stat="{name}">'
        f"{number(cols[name][i], 4)}</td></tr>"
        for name in names
    )
    return f'<table class="stats">{rows}</table>'


def component_page(
    h: Harvest,
    key: Key,
    slugs: dict[str, str],
    shown: dict[int, str],
    milli: dict[str, np.ndarray],
    neighbours: tuple[int | None, int | None],
) -> str:
    """The full HTML of one component's page. `milli` holds the whole top-context and
    reservoir CI columns already in thousandths; `neighbours` the previous and next component
    of the site (for the navigation links)."""
    site, comp = key
    slug = slugs[site]
    data: dict[str, Any] = {
        "top": contexts_json(h.top_contexts, key, milli["top"]),
        "reservoir": contexts_json(h.reservoir, key, milli["reservoir"]),
    }
    prev, nxt = neighbours
    nav = [
        f'<a href="{COMPONENT_ROOT}index.html">overview</a>',
        f'<a href="{COMPONENT_ROOT}{table_path(slug)}">{text(site)} table</a>',
    ]
    if prev is not None:
        nav.append(f'<a rel="prev" href="{prev}.html">← #{prev}</a>')
    if nxt is not None:
        nav.append(f'<a rel="next" href="{nxt}.html">#{nxt} →</a>')
    settings = h.settings
    body = f"""<nav>{" ".join(nav)}</nav>
<h1 id="component-title" data-site="{text(site)}" data-component="{comp}">\
{text(site)} · component {comp}</h1>
{_stats(h, key)}
<h2>Top contexts</h2>
<p class="note">The {text(settings.get("top_k", ""))} highest peak CIs; each token's background \
is this component's CI there (opaque = 1), the peak token is outlined.</p>
<div id="top-contexts" class="contexts"></div>
<h2>Reservoir samples</h2>
<p class="note">A uniform sample of the contexts where it fires.</p>
<div id="reservoir" class="contexts"></div>
<h2>Input tokens</h2>
{_input_tokens(h, key, shown)}
<h2>Output tokens</h2>
<h3>direct path</h3>
{_output_tokens(h, key, shown)}
<h3 id="ablation-effect">removed where it fires, through the whole network</h3>
<p class="note">Masked off at the firing position in the full decomposed model (every other \
component and site kept), the next-token prediction there compared with the model's own: \
dlogp = mean change of the actual next token's log-probability, kl = mean KL(before ‖ after), \
over each sample's first contexts; the tokens below are those whose mean log-probability the \
removal changes most. A component that helps predict a token lowers it when removed.</p>
{_ablation(h, key, shown)}
<h2>Co-active components</h2>
{_coactivation(h, key, slugs)}
<script id="pd-contexts" type="application/json">{json_for_script(data)}</script>"""
    return page(f"{site} #{comp}", body, COMPONENT_ROOT, scripts=True)
