"""A synthetic harvest folder in the on-disk format of `RUN_DIR/harvest/step_N/` (issue 21,
scope 2), written without the harvest command so that the browser can be tested on its own.

Generated with numpy in whole arrays, so 10^4 components take well under a second. The
vocabulary holds hostile pieces (markup, quotes, entities, whitespace) that must show as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

HOSTILE = [
    "<script>alert(1)</script>",
    "</script><b>",
    " &amp;",
    "q\"uote'",
    "\n",
    "  ",
    " the",
    "The",
    "é",
    "\t",
]
NO_RESIDUAL_NOTE = "this site writes inside the MLP, not to the residual stream"


@dataclass
class SyntheticHarvest:
    """The folder written and the tables as written: the truth a test compares pages with."""

    run_dir: Path
    step_dir: Path
    sites: dict[str, int]
    vocab: dict[int, str]
    tables: dict[str, pa.Table]
    summary: dict

    def rows(self, table: str, site: str, component: int) -> list[dict]:
        """One component's rows of a table, in the file's (rank) order."""
        t = self.tables[table]
        mask = pa.compute.and_(
            pa.compute.equal(t.column("site"), site),
            pa.compute.equal(t.column("component"), component),
        )
        return t.filter(mask).to_pylist()

    def rows_of_site(self, table: str, site: str) -> list[dict]:
        """A site's rows of a table, in the file's order."""
        t = self.tables[table]
        return t.filter(pa.compute.equal(t.column("site"), site)).to_pylist()


def _contexts(
    rng: np.random.Generator, site: np.ndarray, comp: np.ndarray, n: int, width: int, vocab: int
) -> pa.Table:
    """`n` contexts per (site, component) row given: peak CI decreasing with rank; every third
    context starts at its sequence's start, so its peak is not in the middle."""
    rows = len(site) * n
    rank = np.tile(np.arange(n), len(site))
    short = rank % 3 == 1
    lengths = np.where(short, width + 3, 2 * width + 1)
    center = np.where(short, 2, width).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = rng.integers(0, vocab, offsets[-1]).astype(np.int32)
    ci_values = (rng.random(offsets[-1]) ** 3).astype(np.float32)
    peak = (0.95 - 0.05 * rank - 0.01 * rng.random(rows)).astype(np.float32)
    ci_values[offsets[:-1] + center] = peak
    position = (center + rng.integers(0, 500, rows)).astype(np.int32)
    return pa.table(
        {
            "site": np.repeat(site, n),
            "component": np.repeat(comp, n).astype(np.int32),
            "rank": rank.astype(np.int32),
            "ci": peak.astype(np.float64),
            "center": center,
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens)),
            "ci_values": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ci_values)),
            "sequence": rng.integers(0, 10_000, rows).astype(np.int64),
            "position": position,
        }
    )


def _ranked_tokens(rng: np.random.Generator, rows: int, k: int, vocab: int) -> np.ndarray:
    """(rows, k) distinct token ids per row."""
    return np.argsort(rng.random((rows, vocab)), axis=1)[:, :k].astype(np.int32)


def _ablation_tables(
    rng: np.random.Generator, a_site: np.ndarray, a_comp: np.ndarray, n_tok: int, V: int
) -> dict[str, pa.Table]:
    """`ablation` and `ablation_tokens` for the alive components (docstring of the caller)."""
    n = len(a_site)
    has_res = (np.arange(n) % 5) != 2
    rows, tokens = [], []
    for sample, keep in (("reservoir", has_res), ("top", np.ones(n, bool))):
        m = int(keep.sum())
        no_next = (np.flatnonzero(keep) % 9) == 4
        rows.append(
            pa.table(
                {
                    "site": a_site[keep],
                    "component": a_comp[keep],
                    "sample": np.full(m, sample, dtype=object),
                    "contexts": np.full(m, 4, np.int64),
                    "next_contexts": np.where(no_next, 0, 4).astype(np.int64),
                    "dlogp": pa.array(-rng.random(m) * 2, pa.float64(), mask=no_next),
                    "kl": rng.random(m),
                }
            )
        )
        for direction, sign in (("promoted", 1.0), ("suppressed", -1.0)):
            value = np.sort(rng.random((m, n_tok)), axis=1)[:, ::-1]
            tokens.append(
                pa.table(
                    {
                        "site": np.repeat(a_site[keep], n_tok),
                        "component": np.repeat(a_comp[keep], n_tok),
                        "sample": np.full(m * n_tok, sample, dtype=object),
                        "direction": np.full(m * n_tok, direction, dtype=object),
                        "rank": np.tile(np.arange(n_tok, dtype=np.int32), m),
                        "token": _ranked_tokens(rng, m, n_tok, V).reshape(-1),
                        "value": sign * value.reshape(-1),
                    }
                )
            )
    return {"ablation": pa.concat_tables(rows), "ablation_tokens": pa.concat_tables(tokens)}


def write_synthetic_harvest(
    run_dir: Path,
    sites: dict[str, tuple[int, bool]],
    step: int = 100,
    seed: int = 0,
    n_top: int = 4,
    n_res: int = 3,
    width: int = 5,
    n_in: int = 4,
    n_out: int = 3,
    n_co: int = 3,
    n_vocab: int = 24,
    ablation: bool = True,
) -> SyntheticHarvest:
    """Write `run_dir/harvest/step_<step>/`; `sites` maps a site to (C, writes the residual).
    With `ablation`, also the tables of `param-decomp ablate` (every alive component has a top
    sample, all but every fifth a reservoir sample; every ninth has no known next token)."""
    rng = np.random.default_rng(seed)
    folder = Path(run_dir) / "harvest" / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {i: piece for i, piece in enumerate(HOSTILE + [f"w{i}" for i in range(n_vocab)])}
    V = len(vocab)
    tokens_seen = 100_000

    site = np.concatenate([np.full(c, s, dtype=object) for s, (c, _) in sites.items()])
    comp = np.concatenate([np.arange(c) for c, _ in sites.values()]).astype(np.int32)
    n = len(comp)
    firing = rng.integers(1, 5000, n)
    firing[(np.arange(n) % 7) == 3] = 0  # some dead components
    firing_any = firing + rng.integers(0, 3000, n) + (firing == 0) * rng.integers(0, 2, n)
    mean_ci = rng.random(n) * (firing_any > 0)
    components = pa.table(
        {
            "site": site,
            "component": comp,
            "firing_count": firing.astype(np.int64),
            "firing_count_any": firing_any.astype(np.int64),
            "density": firing / tokens_seen,
            "density_any": firing_any / tokens_seen,
            "mean_ci": mean_ci,
        }
    )
    alive = firing > 0
    a_site, a_comp, n_alive = site[alive], comp[alive], int(alive.sum())

    top = _contexts(rng, a_site, a_comp, n_top, width, V)
    reservoir = _contexts(rng, a_site, a_comp, n_res, width, V)

    inputs = []
    for by in ("count", "pmi"):
        ids = _ranked_tokens(rng, n_alive, n_in, V)
        count = np.sort(rng.integers(1, 500, (n_alive, n_in)), axis=1)[:, ::-1]
        pmi = np.sort(rng.random((n_alive, n_in)) * 6 - 1, axis=1)[:, ::-1]
        inputs.append(
            pa.table(
                {
                    "site": np.repeat(a_site, n_in),
                    "component": np.repeat(a_comp, n_in),
                    "by": np.full(n_alive * n_in, by, dtype=object),
                    "rank": np.tile(np.arange(n_in, dtype=np.int32), n_alive),
                    "token": ids.reshape(-1),
                    "count": count.reshape(-1).astype(np.int64),
                    "pmi": pmi.reshape(-1),
                }
            )
        )

    residual = np.array([sites[s][1] for s in site])
    w_site, w_comp = site[residual], comp[residual]
    outputs = []
    for direction, sign in (("promote", 1.0), ("suppress", -1.0)):
        m = len(w_site)
        outputs.append(
            pa.table(
                {
                    "site": np.repeat(w_site, n_out),
                    "component": np.repeat(w_comp, n_out),
                    "direction": np.full(m * n_out, direction, dtype=object),
                    "rank": np.tile(np.arange(n_out, dtype=np.int32), m),
                    "token": _ranked_tokens(rng, m, n_out, V).reshape(-1),
                    "value": sign * np.sort(rng.random((m, n_out)), axis=1)[:, ::-1].reshape(-1),
                }
            )
        )

    step_size = max(1, (n_alive - 1) // (n_co + 1))
    offsets = 1 + np.arange(n_co) * step_size + rng.integers(0, step_size, (n_alive, n_co))
    partner = (np.arange(n_alive)[:, None] + offsets) % n_alive
    coactivation = pa.table(
        {
            "site": np.repeat(a_site, n_co),
            "component": np.repeat(a_comp, n_co),
            "rank": np.tile(np.arange(n_co, dtype=np.int32), n_alive),
            "partner_site": a_site[partner].reshape(-1),
            "partner_component": a_comp[partner].reshape(-1),
            "count": np.sort(rng.integers(1, 900, (n_alive, n_co)), axis=1)[:, ::-1].reshape(-1),
            "precision": rng.random(n_alive * n_co),
            "recall": rng.random(n_alive * n_co),
            "jaccard": rng.random(n_alive * n_co),
        }
    )
    tables = {
        "vocab": pa.table(
            {"token": pa.array(list(vocab), pa.int32()), "text": pa.array(list(vocab.values()))}
        ),
        "token_counts": pa.table(
            {"token": pa.array(list(vocab), pa.int32()), "count": rng.integers(0, 99, V)}
        ),
        "components": components,
        "top_contexts": top,
        "reservoir": reservoir,
        "input_tokens": pa.concat_tables(inputs),
        "output_tokens": pa.concat_tables(outputs),
        "coactivation": coactivation,
    }
    if ablation:
        tables |= _ablation_tables(rng, a_site, a_comp, n_out, V)
    for name, table in tables.items():
        pq.write_table(table, folder / f"{name}.parquet")
    if ablation:
        (folder / "ablation.json").write_text(json.dumps({"contexts": 4, "top_tokens": n_out}))
    settings = {
        "tokens": tokens_seen,
        "split": "val",
        "top_k": n_top,
        "context": width,
        "reservoir": n_res,
        "coact_top": n_co,
        "seed": seed,
        "threshold": 0.1,
        "step": step,
        "corpus": "shakespeare",
        "tokenizer": "bytes",
    }
    summary = {
        "step": step,
        "tokens": tokens_seen,
        "split": "val",
        "threshold": 0.1,
        "sites": {
            s: {
                "C": c,
                "alive_count": int((firing[site == s] > 0).sum()),
                "l0_any": float(firing_any[site == s].sum() / tokens_seen),
                "l0": float(firing[site == s].sum() / tokens_seen),
                "writes_residual": writes,
                "output_tokens_note": "" if writes else NO_RESIDUAL_NOTE,
            }
            for s, (c, writes) in sites.items()
        },
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "summary.json").write_text(json.dumps(summary))
    return SyntheticHarvest(
        Path(run_dir), folder, {s: c for s, (c, _) in sites.items()}, vocab, tables, summary
    )
