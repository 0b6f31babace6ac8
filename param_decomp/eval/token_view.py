"""The per-token view of an LM decomposition (S14.7): which of the top components fire on
which tokens of a val sequence, as a PNG heatmap and a self-contained HTML page.

The HTML page has no external resource (inline CSS and JS, system fonts), so it opens from a
run folder on a machine without network. Tokens are rendered server-side (readable without
JS); a <select> of the top components re-colours every token's background by that
component's ci_lower (0 = transparent, 1 = full colour).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float

from param_decomp.eval.figures import plt, save_png
from param_decomp.eval.token_text import ascii_label, visible_html_text

HIGHLIGHT_RGB = (230, 85, 13)  # token background: this colour at opacity = CI
PNG_MAX_TOKENS = 64
PNG_MAX_COMPONENTS = 16


@dataclass(frozen=True)
class Pick:
    """One component of the picker: its site, index within the site, and mean CI over the
    sample's tokens (the ranking)."""

    site: str
    component: int
    mean_ci: float

    @property
    def label(self) -> str:
        return f"{self.site} · component {self.component} (mean CI {self.mean_ci:.3f})"


def top_components(
    ci_by_site: Mapping[str, Float[np.ndarray, "tokens C"]], per_site: int
) -> list[Pick]:
    """The `per_site` components of each site with the largest mean CI over the tokens, all
    sites together ordered by mean CI, largest first (ties: site order, then index). Each
    site's C is its own array's width."""
    picks: list[Pick] = []
    for site, ci in ci_by_site.items():
        mean = np.asarray(ci, np.float64).mean(axis=0)
        order = np.argsort(-mean, kind="stable")[:per_site]
        picks += [Pick(site, int(c), float(mean[c])) for c in order]
    return sorted(picks, key=lambda p: -p.mean_ci)  # sorted() is stable


def _column(ci_by_site: Mapping[str, np.ndarray], pick: Pick) -> np.ndarray:
    return np.asarray(ci_by_site[pick.site])[:, pick.component]


def plot_token_ci(
    tokens: Sequence[str],
    ci_by_site: Mapping[str, Float[np.ndarray, "tokens C"]],
    picks: Sequence[Pick],
    path: Path,
    step_label: str,
) -> Path:
    """Heatmap: rows the first PNG_MAX_TOKENS tokens of the sample (labelled with their
    text), columns the first PNG_MAX_COMPONENTS picks, colour ci_lower in [0, 1]."""
    if not picks:
        raise ValueError("no components to plot")
    n_tok = min(len(tokens), PNG_MAX_TOKENS)
    shown = list(picks[:PNG_MAX_COMPONENTS])
    grid = np.stack([_column(ci_by_site, p)[:n_tok] for p in shown], axis=1)
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * len(shown), 1.5 + 0.22 * n_tok))
    try:
        im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        rows = [f"{i}: {ascii_label(t)}" for i, t in enumerate(tokens[:n_tok])]
        ax.set_yticks(range(n_tok), rows)
        ax.set_xticks(range(len(shown)), [f"{p.site} c{p.component}" for p in shown], rotation=90)
        ax.tick_params(labelsize=7)
        ax.set_title(
            f"first {n_tok} of {len(tokens)} tokens x top {len(shown)} components", fontsize=9
        )
        ax.set_xlabel("component (site, index), by mean CI on this sequence, descending")
        ax.set_ylabel("token position: token text")
        fig.colorbar(im, ax=ax, label="ci_lower")
        fig.suptitle(f"Causal importance per token of one val sequence, {step_label}")
        fig.tight_layout()
        save_png(fig, path)
    finally:
        plt.close(fig)
    return Path(path)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; }
.meta { color: #555; font-size: 0.9em; }
#pd-tokens { font-family: monospace; font-size: 15px; line-height: 1.9; white-space: pre-wrap;
  border: 1px solid #ccc; padding: 0.8em; margin-top: 0.8em; }
.tok { box-shadow: inset 0 0 0 1px #e4e4e4; border-radius: 2px; }
.tok.ws, .tok.special { color: #999; }
.legend { display: inline-block; width: 160px; height: 12px; vertical-align: middle;
  background: linear-gradient(to right, rgba(%(rgb)s, 0), rgba(%(rgb)s, 1)); }
"""

_JS = """
(function () {
  var data = JSON.parse(document.getElementById("pd-data").textContent);
  var picker = document.getElementById("pd-picker");
  var spans = document.querySelectorAll("#pd-tokens .tok");
  function paint() {
    var values = data.ci[Number(picker.value)];
    for (var i = 0; i < spans.length; i++) {
      var v = values[i];
      spans[i].style.backgroundColor = "rgba(" + data.rgb + ", " + v + ")";
      spans[i].title = "token " + i + " (id " + data.ids[i] + "): CI " + v.toFixed(3);
    }
  }
  picker.addEventListener("change", paint);
  paint();
})();
"""


def _json_for_script(obj: object) -> str:
    """JSON safe inside <script>: `<`, `>` and `&` as \\u escapes, so no `</script>`."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _token_span(i: int, text: str, token_id: int, ci: float, rgb: str) -> str:
    shown = visible_html_text(text)
    kind = "tok"
    if text and not text.strip():
        kind += " ws"
    elif shown != text:
        kind += " special"
    span = (
        f'<span class="{kind}" data-i="{i}" style="background-color: rgba({rgb}, {ci:.4f})" '
        f'title="token {i} (id {token_id}): CI {ci:.3f}">{html.escape(shown)}</span>'
    )
    return span + ("<br>" if "\n" in text else "")


def write_token_html(
    tokens: Sequence[str],
    token_ids: Sequence[int],
    ci_by_site: Mapping[str, Float[np.ndarray, "tokens C"]],
    picks: Sequence[Pick],
    path: Path,
    heading: str,
) -> Path:
    """The page: heading, picker (picks in order, the first selected), the tokens coloured by
    the selected component's ci_lower."""
    if not picks:
        raise ValueError("no components to show")
    if len(tokens) != len(token_ids):
        raise ValueError(f"{len(tokens)} token strings but {len(token_ids)} ids")
    rgb = ", ".join(str(c) for c in HIGHLIGHT_RGB)
    columns = [np.round(_column(ci_by_site, p).astype(np.float64), 4) for p in picks]
    for p, col in zip(picks, columns, strict=True):
        if col.shape[0] != len(tokens):
            raise ValueError(f"{p.site}: CI has {col.shape[0]} rows for {len(tokens)} tokens")
    options = "\n".join(
        f'<option value="{k}"{" selected" if k == 0 else ""}>{html.escape(p.label)}</option>'
        for k, p in enumerate(picks)
    )
    spans = "".join(
        _token_span(i, t, int(token_ids[i]), float(columns[0][i]), rgb)
        for i, t in enumerate(tokens)
    )
    data = {"rgb": rgb, "ids": [int(t) for t in token_ids], "ci": [c.tolist() for c in columns]}
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(heading)}</title>
<style>{_CSS % {"rgb": rgb}}</style>
</head>
<body>
<h1>{html.escape(heading)}</h1>
<p class="meta">{len(tokens)} tokens of one val sequence. Each token's background shows the
chosen component's causal importance (ci_lower): <span class="legend"></span> 0 to 1.
The list holds the top components of every site by mean CI on this sequence, largest first.
Whitespace is shown as · (space), ↵ (newline), ⇥ (tab); hover a token for its id and CI.</p>
<label for="pd-picker">component:</label>
<select id="pd-picker">
{options}
</select>
<div id="pd-tokens">{spans}</div>
<script type="application/json" id="pd-data">{_json_for_script(data)}</script>
<script>{_JS}</script>
</body>
</html>
"""
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
