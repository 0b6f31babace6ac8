"""The harvested state on the host turned into the tables of `store.py` (pyarrow, no pandas).

Rankings are total orders (ties broken as each function says), so a table is a pure function of
the state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from jaxtyping import Float, Int

CONTEXT_COLUMNS = ("ci", "center", "tokens", "ci_values", "sequence", "position")


def component_index(site_C: Sequence[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(site name, component within the site) of every global component."""
    sites = np.concatenate([np.full(c, s, dtype=object) for s, c in site_C])
    comps = np.concatenate([np.arange(c, dtype=np.int32) for _, c in site_C])
    return sites, comps


def component_columns(sites: np.ndarray, comps: np.ndarray, g: np.ndarray) -> dict[str, pa.Array]:
    """The `site` and `component` columns of rows that name global component indices `g`."""
    return {"site": pa.array(sites[g], pa.string()), "component": pa.array(comps[g], pa.int32())}


def concat_column(cols: dict[str, list], key: str, dtype: type) -> np.ndarray:
    """One table column from the per-component chunks gathered in `cols[key]` (empty if none)."""
    return np.concatenate(cols[key]).astype(dtype) if cols[key] else np.zeros(0, dtype)


def components_table(
    site_C: Sequence[tuple[str, int]],
    n_fire: Int[np.ndarray, " n"],
    n_any: Int[np.ndarray, " n"],
    ci_sum: Float[np.ndarray, " n"],
    tokens: int,
) -> pa.Table:
    sites, comps = component_index(site_C)
    return pa.table(
        {
            "site": pa.array(sites, pa.string()),
            "component": pa.array(comps, pa.int32()),
            "firing_count": pa.array(n_fire, pa.int64()),
            "firing_count_any": pa.array(n_any, pa.int64()),
            "density": pa.array(n_fire / tokens, pa.float64()),
            "density_any": pa.array(n_any / tokens, pa.float64()),
            "mean_ci": pa.array(ci_sum / tokens, pa.float64()),
        }
    )


def contexts_table(
    site_C: Sequence[tuple[str, int]],
    valid: np.ndarray,
    ci: np.ndarray,
    seq: np.ndarray,
    pos: np.ndarray,
    tokens: np.ndarray,
    values: np.ndarray,
) -> pa.Table:
    """One row per filled slot (n, k) of a top-k or reservoir state; rank = slot index. A
    context is trimmed to the window: its tokens are those not marked -1."""
    sites, comps = component_index(site_C)
    g, rank = np.nonzero(valid)
    toks, vals = tokens[g, rank], values[g, rank]
    inside = toks >= 0
    lengths = inside.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    width = tokens.shape[-1]
    center = (width // 2) - np.argmax(inside, axis=1) if len(g) else np.zeros(0, np.int64)
    return pa.table(
        {
            **component_columns(sites, comps, g),
            "rank": pa.array(rank, pa.int32()),
            "ci": pa.array(ci[g, rank], pa.float32()),
            "center": pa.array(center, pa.int32()),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array(toks[inside], pa.int32())),
            "ci_values": pa.ListArray.from_arrays(offsets, pa.array(vals[inside], pa.float32())),
            "sequence": pa.array(seq[g, rank], pa.int64()),
            "position": pa.array(pos[g, rank], pa.int32()),
        }
    )


def pmi(
    count: Int[np.ndarray, "*n"], n_c: Int[np.ndarray, "*n"], n_t: Int[np.ndarray, "*n"], N: int
) -> Float[np.ndarray, "*n"]:
    """ln(count(c, t) N / (count(c) count(t))): how much more often c fires on t than chance."""
    return np.log(count * float(N)) - np.log(n_c.astype(np.float64) * n_t.astype(np.float64))


def input_tokens_table(
    site_C: Sequence[tuple[str, int]],
    input_count: Int[np.ndarray, "vocab n"],
    n_fire: Int[np.ndarray, " n"],
    tok_count: Int[np.ndarray, " vocab"],
    tokens: int,
    top: int,
) -> pa.Table:
    """Per component the `top` tokens it fires on by count (ties: lower token id first) and by
    PMI (ties: higher count, then lower token id); only tokens it fired on at least once."""
    sites, comps = component_index(site_C)
    cols: dict[str, list] = {k: [] for k in ("g", "by", "rank", "token", "count", "pmi")}
    for g in np.flatnonzero(n_fire):
        col = input_count[:, g]
        tok = np.flatnonzero(col)
        cnt = col[tok].astype(np.int64)
        p = pmi(cnt, np.full(len(tok), n_fire[g]), tok_count[tok], tokens)
        for by, order in (
            ("count", np.lexsort((tok, -cnt))),
            ("pmi", np.lexsort((tok, -cnt, -p))),
        ):
            keep = order[:top]
            cols["g"].append(np.full(len(keep), g))
            cols["by"] += [by] * len(keep)
            cols["rank"].append(np.arange(len(keep)))
            cols["token"].append(tok[keep])
            cols["count"].append(cnt[keep])
            cols["pmi"].append(p[keep])
    cat = lambda k, dtype: concat_column(cols, k, dtype)  # noqa: E731
    g = cat("g", np.int64)
    return pa.table(
        {
            **component_columns(sites, comps, g),
            "by": pa.array(cols["by"], pa.string()),
            "rank": pa.array(cat("rank", np.int32), pa.int32()),
            "token": pa.array(cat("token", np.int32), pa.int32()),
            "count": pa.array(cat("count", np.int64), pa.int64()),
            "pmi": pa.array(cat("pmi", np.float64), pa.float64()),
        }
    )


def output_tokens_table(site: str, values: Float[np.ndarray, "C vocab"], top: int) -> pa.Table:
    """Per component of `site` the `top` tokens of highest value (promote) and of lowest
    (suppress), ties to the lower token id."""
    C, vocab = values.shape
    top = min(top, vocab)
    ids = np.arange(vocab)
    rows: dict[str, list] = {k: [] for k in ("component", "direction", "rank", "token", "value")}
    for c in range(C):
        for direction, key in (("promote", -values[c]), ("suppress", values[c])):
            keep = np.lexsort((ids, key))[:top]
            rows["component"].append(np.full(top, c))
            rows["direction"] += [direction] * top
            rows["rank"].append(np.arange(top))
            rows["token"].append(keep)
            rows["value"].append(values[c, keep])
    cat = lambda k: np.concatenate(rows[k]) if rows[k] else np.zeros(0)  # noqa: E731
    return pa.table(
        {
            "site": pa.array([site] * len(rows["direction"]), pa.string()),
            "component": pa.array(cat("component"), pa.int32()),
            "direction": pa.array(rows["direction"], pa.string()),
            "rank": pa.array(cat("rank"), pa.int32()),
            "token": pa.array(cat("token"), pa.int32()),
            "value": pa.array(cat("value"), pa.float64()),
        }
    )


def coactivation_table(
    site_C: Sequence[tuple[str, int]], coact: Int[np.ndarray, "n n"], top: int
) -> pa.Table:
    """Per component a, its `top` partners b != a that fired with it on some token, by Jaccard
    n_ab / (n_a + n_b - n_ab) (ties: higher n_ab, then the lower global index), with precision
    n_ab / n_a (how often b fires when a does) and recall n_ab / n_b."""
    sites, comps = component_index(site_C)
    n = np.diagonal(coact).astype(np.int64)
    cols: dict[str, list] = {k: [] for k in ("a", "rank", "b", "count", "p", "r", "j")}
    for a in np.flatnonzero(n):
        row = coact[a].astype(np.int64)
        b = np.flatnonzero(row)
        b = b[b != a]
        n_ab = row[b]
        jac = n_ab / (n[a] + n[b] - n_ab)
        keep = np.lexsort((b, -n_ab, -jac))[:top]
        cols["a"].append(np.full(len(keep), a))
        cols["rank"].append(np.arange(len(keep)))
        cols["b"].append(b[keep])
        cols["count"].append(n_ab[keep])
        cols["p"].append(n_ab[keep] / n[a])
        cols["r"].append(n_ab[keep] / n[b[keep]])
        cols["j"].append(jac[keep])
    cat = lambda k, dtype: concat_column(cols, k, dtype)  # noqa: E731
    a, b = cat("a", np.int64), cat("b", np.int64)
    return pa.table(
        {
            "site": pa.array(sites[a], pa.string()),
            "component": pa.array(comps[a], pa.int32()),
            "rank": pa.array(cat("rank", np.int32), pa.int32()),
            "partner_site": pa.array(sites[b], pa.string()),
            "partner_component": pa.array(comps[b], pa.int32()),
            "count": pa.array(cat("count", np.int64), pa.int64()),
            "precision": pa.array(cat("p", np.float64), pa.float64()),
            "recall": pa.array(cat("r", np.float64), pa.float64()),
            "jaccard": pa.array(cat("j", np.float64), pa.float64()),
        }
    )
