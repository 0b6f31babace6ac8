"""The host side of an ablation pass: which harvested contexts are ablated, the running sums of
their effects, and the tables they become (`ablation`, `ablation_tokens`).

Sums are float64 and added row by row in the rows' fixed order (`np.add.at`), so the tables do
not depend on the batch size or the mesh beyond the float32 rounding of each row's forward.
Memory is fixed by the shapes: 2 samples x components x vocabulary float64 token sums (for the
Shakespeare CPU decomposition, 2432 x 1024: 40 MB) and one batch of rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from jaxtyping import Float, Int

from param_decomp.harvest.tables import component_columns, component_index, concat_column

SAMPLES = ("reservoir", "top")  # sample 0: the uniform reservoir; 1: the top-CI contexts
DIRECTIONS = ("promoted", "suppressed")  # by the removal: log p after - before, high / low


@dataclass(frozen=True)
class AblationRows:
    """The ablations to run, one per (component, sample, rank < contexts), ordered by global
    component (so each site's rows are one slice), then sample, then rank."""

    g: Int[np.ndarray, " n"]  # global component (site offset + component)
    component: Int[np.ndarray, " n"]  # within its site
    sample: Int[np.ndarray, " n"]  # index into SAMPLES
    sequence: Int[np.ndarray, " n"]
    position: Int[np.ndarray, " n"]

    def __len__(self) -> int:
        return len(self.g)

    def site_slices(self, site_C: Sequence[tuple[str, int]]) -> dict[str, slice]:
        """Each site's rows (empty slices included)."""
        bounds = np.cumsum([0] + [c for _, c in site_C])
        starts = np.searchsorted(self.g, bounds)
        return {s: slice(int(starts[i]), int(starts[i + 1])) for i, (s, _) in enumerate(site_C)}


def select_rows(
    site_C: Sequence[tuple[str, int]], samples: Sequence[pa.Table], contexts: int
) -> AblationRows:
    """The first `contexts` ranks of each component in each sample table (reservoir, top
    contexts: columns site, component, rank, sequence, position)."""
    starts = np.cumsum([0] + [c for _, c in site_C])[:-1]
    offsets = dict(zip([s for s, _ in site_C], starts, strict=True))
    parts = []
    for index, table in enumerate(samples):
        rank = table.column("rank").to_numpy()
        keep = rank < contexts
        site = np.asarray(table.column("site").to_pylist(), dtype=object)[keep]
        comp = table.column("component").to_numpy()[keep].astype(np.int64)
        g = np.array([offsets[s] for s in site], np.int64) + comp
        parts.append(
            (
                g,
                comp,
                np.full(len(g), index, np.int64),
                rank[keep].astype(np.int64),
                table.column("sequence").to_numpy()[keep].astype(np.int64),
                table.column("position").to_numpy()[keep].astype(np.int64),
            )
        )
    g, comp, sample, rank, seq, pos = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.lexsort((rank, sample, g))
    return AblationRows(
        g[order],
        comp[order].astype(np.int32),
        sample[order],
        seq[order],
        pos[order].astype(np.int32),
    )


class AblationSums:
    """Per (component, sample): contexts ablated, those with a known next token, and the sums
    of the next token's change in log p, of the KL and of every token's change in log p."""

    def __init__(self, n_components: int, vocab: int) -> None:
        shape = (n_components, len(SAMPLES))
        self.contexts = np.zeros(shape, np.int64)
        self.with_next = np.zeros(shape, np.int64)
        self.dlogp = np.zeros(shape, np.float64)
        self.kl = np.zeros(shape, np.float64)
        self.tokens = np.zeros(shape + (vocab,), np.float64)

    def add(
        self,
        g: Int[np.ndarray, " n"],
        sample: Int[np.ndarray, " n"],
        has_next: np.ndarray,
        dlogp: Float[np.ndarray, " n"],
        kl: Float[np.ndarray, " n"],
        delta: Float[np.ndarray, "n vocab"],
    ) -> None:
        at = (g, sample)
        np.add.at(self.contexts, at, 1)
        np.add.at(self.with_next, at, has_next.astype(np.int64))
        np.add.at(self.dlogp, at, np.where(has_next, dlogp, 0.0).astype(np.float64))
        np.add.at(self.kl, at, kl.astype(np.float64))
        np.add.at(self.tokens, at, delta.astype(np.float64))


def ablation_table(site_C: Sequence[tuple[str, int]], sums: AblationSums) -> pa.Table:
    """One row per (component, sample) with at least one context: `contexts`, `next_contexts`
    (those whose next token is known), `dlogp` = mean change in log p of the actual next token
    (after - before; null without a next token), `kl` = mean KL(before || after)."""
    sites, comps = component_index(site_C)
    g, s = np.nonzero(sums.contexts)
    n, n_next = sums.contexts[g, s], sums.with_next[g, s]
    dlogp = np.where(n_next > 0, sums.dlogp[g, s] / np.maximum(n_next, 1), np.nan)
    return pa.table(
        {
            **component_columns(sites, comps, g),
            "sample": pa.array(np.asarray(SAMPLES, dtype=object)[s], pa.string()),
            "contexts": pa.array(n, pa.int64()),
            "next_contexts": pa.array(n_next, pa.int64()),
            "dlogp": pa.array(dlogp, pa.float64(), mask=n_next == 0),
            "kl": pa.array(sums.kl[g, s] / n, pa.float64()),
        }
    )


def ablation_tokens_table(
    site_C: Sequence[tuple[str, int]], sums: AblationSums, top: int, vocab: int
) -> pa.Table:
    """Per (component, sample) with contexts, the `top` tokens (ids below `vocab`) whose mean
    log p the removal raises most (`promoted`; ties: lower id) and lowers most (`suppressed`)."""
    sites, comps = component_index(site_C)
    top = min(top, vocab)
    ids = np.arange(vocab)
    cols: dict[str, list] = {k: [] for k in ("g", "s", "direction", "rank", "token", "value")}
    for g, s in zip(*np.nonzero(sums.contexts), strict=True):
        mean = sums.tokens[g, s, :vocab] / sums.contexts[g, s]
        for direction, key in zip(DIRECTIONS, (-mean, mean), strict=True):
            keep = np.lexsort((ids, key))[:top]
            cols["g"].append(np.full(top, g))
            cols["s"].append(np.full(top, s))
            cols["direction"] += [direction] * top
            cols["rank"].append(np.arange(top))
            cols["token"].append(keep)
            cols["value"].append(mean[keep])
    cat = lambda k, dtype: concat_column(cols, k, dtype)  # noqa: E731
    g = cat("g", np.int64)
    return pa.table(
        {
            **component_columns(sites, comps, g),
            "sample": pa.array(np.asarray(SAMPLES, dtype=object)[cat("s", np.int64)], pa.string()),
            "direction": pa.array(cols["direction"], pa.string()),
            "rank": pa.array(cat("rank", np.int32), pa.int32()),
            "token": pa.array(cat("token", np.int32), pa.int32()),
            "value": pa.array(cat("value", np.float64), pa.float64()),
        }
    )
