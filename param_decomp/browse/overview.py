"""The site's front page: what was harvested, and per site C, alive count, L0 and the sorted
density curves, each linking to that site's component table."""

from __future__ import annotations

import numpy as np

from param_decomp.browse.layout import table_path
from param_decomp.browse.markup import number, page, text
from param_decomp.browse.svg import CURVES, density_svg
from param_decomp.browse.tables import Harvest


def _densities(h: Harvest, site: str) -> dict[str, np.ndarray]:
    cols = h.components.columns
    rows = [i for c in h.site_components(site) for i in h.components.rows((site, c))]
    return {name: np.array([cols[name][i] for i in rows], dtype=np.float64) for name, _ in CURVES}


def overview_page(h: Harvest, slugs: dict[str, str], run_name: str) -> str:
    """The full HTML of `index.html`."""
    s = h.summary
    info = (
        f"step {number(s.get('step'))} · {number(s.get('tokens'))} tokens of the "
        f"{text(s.get('split', '?'))} split of {text(h.settings.get('corpus', '?'))} · "
        f"alive threshold {number(s.get('threshold'))}"
    )
    rows = []
    for site in h.sites:
        d = s.get("sites", {}).get(site, {})
        note = text(d.get("output_tokens_note") or "")
        rows.append(
            f'<tr data-site="{text(site)}"><td><a href="{table_path(slugs[site])}">'
            f"{text(site)}</a></td>"
            f'<td class="num">{number(d.get("C"))}</td>'
            f'<td class="num">{number(d.get("alive_count"))}</td>'
            f'<td class="num">{number(d.get("l0"))}</td>'
            f'<td class="num">{number(d.get("l0_any"))}</td>'
            f"<td>{density_svg(_densities(h, site), site)}</td>"
            f'<td class="note">{note}</td></tr>'
        )
    settings = "".join(
        f"<tr><td>{text(k)}</td><td>{text(v)}</td></tr>" for k, v in h.settings.items()
    )
    legend = " ".join(f'<span style="color:{colour}">— {name}</span>' for name, colour in CURVES)
    body = f"""<h1>{text(run_name)}: components</h1>
<p id="harvest-info">{info}</p>
<table id="sites"><thead><tr><th>site</th><th class="num">C</th><th class="num">alive</th>
<th class="num">L0</th><th class="num">L0 (CI &gt; 0)</th>
<th>sorted density per component (log) {legend}</th><th>output tokens</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Harvest settings</h2>
<table class="stats">{settings}</table>"""
    return page(f"{run_name}: components", body, "")
