"""The site's stylesheet, script and vocabulary, written as local files under `OUT/assets/`.

The script only renders what its page embeds as JSON (a component's contexts, a site's
component table) with the token pieces of `vocab.js`, which every page shares (the browser
reads it from its cache), so that no component page repeats them. Nothing is fetched, since
browsers refuse fetch() from file://. Token text enters the DOM through textContent only, so
no harvested string is ever markup.
"""

from __future__ import annotations

from pathlib import Path

from param_decomp.browse.markup import ASSETS, json_for_script

CSS = """\
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 80rem;
       padding: 0 1rem; color: #222; }
nav { margin-bottom: 1rem; } nav a { margin-right: 1rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 1.6rem; }
table { border-collapse: collapse; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
th button { font: inherit; font-weight: bold; background: none; border: 0; cursor: pointer;
            padding: 0; }
th[aria-sort=descending] button::after { content: " \\25BC"; }
th[aria-sort=ascending] button::after { content: " \\25B2"; }
.tok { white-space: pre; font-family: ui-monospace, monospace; border-radius: 2px; }
.tok.peak { outline: 1px solid #333; }
.ctx { margin: 3px 0; }
.ctx-head { display: inline-block; min-width: 14rem; color: #666; font-size: 12px; }
.chip { white-space: pre; font-family: ui-monospace, monospace; background: #eee;
        padding: 0 3px; margin-right: 3px; border-radius: 3px; }
.chip.hit { background: #fdd0a2; }
.note, .empty { color: #666; font-style: italic; }
.columns { display: flex; gap: 2.5rem; flex-wrap: wrap; }
.stats td:first-child { color: #555; }
svg { background: #fafafa; } svg text { font: 10px sans-serif; fill: #555; }
#token-search { width: 16rem; }
"""

JS = """\
/* param-decomp browse: renders the JSON a page embeds (a component's contexts, a site's
   component table). Text enters the DOM through textContent only. */
(() => {
  "use strict";
  const PAGE = 300;
  const embedded = (id) => {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  };
  const make = (tag, cls, content) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined && content !== null) node.textContent = content;
    return node;
  };
  const VOCAB = window.PD_VOCAB || {};
  const shown = (id) => (id in VOCAB ? VOCAB[id] : `\\u27e8${id}\\u27e9`);
  const fmt = (x) => {
    if (x === null || x === undefined) return "\\u2013";
    if (Number.isInteger(x)) return String(x);
    return String(Number(x.toPrecision(3)));
  };

  const contextRow = (ctx) => {
    const row = make("div", "ctx");
    const peak = ctx.m === null ? "\\u2013" : ctx.m.toFixed(3);
    const head = `CI ${peak} \\u00b7 seq ${ctx.s} \\u00b7 pos ${ctx.p}`;
    row.appendChild(make("span", "ctx-head", head));
    const line = make("span", "ctx-tokens");
    ctx.t.forEach((id, j) => {
      const milli = ctx.c[j];
      const tok = make("span", j === ctx.k ? "tok peak" : "tok", shown(id));
      tok.style.backgroundColor = `rgba(230, 85, 13, ${Math.min(1, Math.max(0, milli / 1000))})`;
      tok.title = `CI ${(milli / 1000).toFixed(3)} \\u00b7 token ${id}`;
      line.appendChild(tok);
    });
    row.appendChild(line);
    return row;
  };

  const renderContexts = (data) => {
    for (const [boxId, key] of [["top-contexts", "top"], ["reservoir", "reservoir"]]) {
      const box = document.getElementById(boxId);
      if (!box) continue;
      if (!data[key].length) box.appendChild(make("p", "empty", "none harvested"));
      for (const ctx of data[key]) box.appendChild(contextRow(ctx));
    }
  };

  // row layout: [component, firing, density, density_any, mean_ci, top_pmi, effect, dlogp,
  //              count ids, pmi ids]
  const COLUMNS = {
    component: 0, firing: 1, density: 2, density_any: 3, mean_ci: 4, pmi: 5, effect: 6, dlogp: 7,
  };
  const renderTable = (data) => {
    const body = document.getElementById("component-rows");
    const status = document.getElementById("table-status");
    const search = document.getElementById("token-search");
    const substring = document.getElementById("token-substring");
    const more = document.getElementById("show-more");
    const state = { key: "component", desc: false, limit: PAGE };
    const norm = (s) => s.trim().toLowerCase();

    const matchingTokens = () => {
      const query = norm(search.value);
      if (!query) return null;
      const ids = new Set();
      for (const [id, piece] of Object.entries(VOCAB)) {
        const t = norm(piece);
        if (substring.checked ? t.includes(query) : t === query) ids.add(Number(id));
      }
      return ids;
    };
    const visibleRows = (ids) => {
      const list = ids === null ? data.rows.slice()
        : data.rows.filter((r) => r[8].some((id) => ids.has(id)) || r[9].some((id) => ids.has(id)));
      const k = COLUMNS[state.key];
      const sign = state.desc ? -1 : 1;
      list.sort((a, b) => {
        const x = a[k];
        const y = b[k];
        if (x === null || y === null) return (x === null) - (y === null) || a[0] - b[0];
        return sign * (x - y) || a[0] - b[0];
      });
      return list;
    };
    const cell = (tr, content, cls) => tr.appendChild(make("td", cls, content));
    const draw = () => {
      const ids = matchingTokens();
      const list = visibleRows(ids);
      body.replaceChildren();
      for (const r of list.slice(0, state.limit)) {
        const tr = make("tr");
        tr.dataset.component = r[0];
        const link = make("a", null, `#${r[0]}`);
        link.href = `components/${r[0]}.html`;
        cell(tr, null).appendChild(link);
        for (const i of [1, 2, 3, 4, 5, 6, 7]) cell(tr, fmt(r[i]), "num");
        const chips = cell(tr, null, "toks");
        const shownIds = r[8].slice(0, 6);
        if (ids) for (const id of [...r[8], ...r[9]]) {
          if (ids.has(id) && !shownIds.includes(id)) shownIds.push(id);
        }
        for (const id of shownIds) {
          const cls = ids && ids.has(id) ? "chip hit" : "chip";
          chips.appendChild(make("span", cls, shown(id)));
        }
        body.appendChild(tr);
      }
      const query = search.value.trim();
      const total = data.rows.length;
      const found = query
        ? `${list.length} of ${total} components have an input token matching ` +
          `\\u201c${query}\\u201d (${ids.size} tokens match)`
        : `${total} components`;
      const cut = list.length > state.limit ? `; showing the first ${state.limit}` : "";
      status.textContent = found + cut;
      more.hidden = list.length <= state.limit;
      for (const th of document.querySelectorAll("th[data-key]")) {
        const sort = state.desc ? "descending" : "ascending";
        th.setAttribute("aria-sort", th.dataset.key === state.key ? sort : "none");
      }
    };
    for (const button of document.querySelectorAll("th[data-key] button")) {
      button.addEventListener("click", () => {
        const key = button.parentElement.dataset.key;
        state.desc = key === state.key ? !state.desc : key !== "component";
        state.key = key;
        state.limit = PAGE;
        draw();
      });
    }
    search.addEventListener("input", () => { state.limit = PAGE; draw(); });
    substring.addEventListener("change", draw);
    more.addEventListener("click", () => { state.limit += PAGE; draw(); });
    draw();
  };

  const contexts = embedded("pd-contexts");
  if (contexts) renderContexts(contexts);
  const table = embedded("pd-table");
  if (table) renderTable(table);
})();
"""


def write_assets(out: Path, shown: dict[int, str]) -> None:
    """Write `OUT/assets/`: style.css, browse.js and vocab.js (`shown`: token id -> the piece
    as displayed)."""
    folder = Path(out) / ASSETS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "style.css").write_text(CSS, encoding="utf-8")
    (folder / "browse.js").write_text(JS, encoding="utf-8")
    vocab = json_for_script({str(token): piece for token, piece in shown.items()})
    (folder / "vocab.js").write_text(f"window.PD_VOCAB = {vocab};\n", encoding="utf-8")
