"""Reading `RUN_DIR/harvest/step_N/` with pyarrow, grouped by component.

The browser reads the on-disk format itself (see param_decomp/browse/README.md) rather than
through the harvest package, so it depends on the files, not on the code that wrote them.
Each table is sorted once and turned into plain Python columns once; a component's rows are
then a slice, which keeps writing 10^4 pages linear in the data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

Key = tuple[str, int]

_CONTEXT = (
    "site",
    "component",
    "rank",
    "ci",
    "center",
    "tokens",
    "ci_values",
    "sequence",
    "position",
)
COLUMNS: dict[str, tuple[str, ...]] = {  # what the browser reads of each table
    "vocab": ("token", "text"),
    "components": (
        "site",
        "component",
        "firing_count",
        "firing_count_any",
        "density",
        "density_any",
        "mean_ci",
    ),
    "top_contexts": _CONTEXT,
    "reservoir": _CONTEXT,
    "input_tokens": ("site", "component", "by", "rank", "token", "count", "pmi"),
    "output_tokens": ("site", "component", "direction", "rank", "token", "value"),
    "coactivation": (
        "site",
        "component",
        "rank",
        "partner_site",
        "partner_component",
        "count",
        "precision",
        "recall",
        "jaccard",
    ),
}
OPTIONAL: dict[str, tuple[str, ...]] = {  # read when `ablation.json` marks them finished
    "ablation": ("site", "component", "sample", "contexts", "next_contexts", "dlogp", "kl"),
    "ablation_tokens": ("site", "component", "sample", "direction", "rank", "token", "value"),
}
ABLATION_MARKER = "ablation.json"
SAMPLES = ("reservoir", "top")  # the ablation's samples; the first present is the one shown
_STEP = re.compile(r"step_(\d+)")


class BrowseError(Exception):
    """A harvest that cannot be browsed; the message names the folder or file and why."""


def harvest_step_dir(run_dir: Path, step: int | None = None) -> Path:
    """`RUN_DIR/harvest/step_N`: the newest N, or the given one."""
    root = Path(run_dir) / "harvest"
    steps = {
        int(m.group(1)): p
        for p in (root.iterdir() if root.is_dir() else ())
        if p.is_dir() and (m := _STEP.fullmatch(p.name))
    }
    if not steps:
        raise BrowseError(
            f"{root} holds no step_N folder: run `param-decomp harvest {run_dir}` first"
        )
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise BrowseError(f"{root} has no step_{step} (harvested steps: {sorted(steps)})")
    return steps[step]


@dataclass(frozen=True)
class Contexts:
    """The list columns of a context table, flat: row i's tokens are ids[offsets[i]:offsets[i+1]],
    its CI values ci[...] over the same range."""

    offsets: np.ndarray
    ids: np.ndarray
    ci: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.ids[lo:hi], self.ci[lo:hi]


@dataclass(frozen=True)
class Grouped:
    """One harvest table sorted by (site, component, ...key columns, rank), as Python lists per
    scalar column; `rows(key)` is the component's row range (empty when it has none)."""

    columns: dict[str, list[Any]]
    spans: dict[Key, tuple[int, int]]
    contexts: Contexts | None = None

    def rows(self, key: Key) -> range:
        return range(*self.spans.get(key, (0, 0)))

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))


def _list_column(table: pa.Table, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat values) of a list column, offsets rebased to the flat values."""
    column = table.column(name).combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # an empty table keeps zero chunks
        column = pa.array([], type=column.type)
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(dtype)
    return offsets - offsets[0], values[offsets[0] : offsets[-1]]


def group(table: pa.Table, order: tuple[str, ...] = ("rank",)) -> Grouped:
    """Sort by (site, component, *order) and index each component's rows."""
    keys = [("site", "ascending"), ("component", "ascending")]
    table = table.sort_by(keys + [(name, "ascending") for name in order])
    scalar = [n for n in table.column_names if not pa.types.is_list(table.schema.field(n).type)]
    columns = {name: table.column(name).to_pylist() for name in scalar}
    spans: dict[Key, tuple[int, int]] = {}
    sites, comps = columns["site"], columns["component"]
    start = 0
    for i in range(1, len(sites) + 1):
        if i == len(sites) or sites[i] != sites[start] or comps[i] != comps[start]:
            spans[(sites[start], comps[start])] = (start, i)
            start = i
    contexts = None
    if "tokens" in table.column_names:
        offsets, ids = _list_column(table, "tokens", np.int64)
        ci_offsets, ci = _list_column(table, "ci_values", np.float64)
        if not np.array_equal(offsets, ci_offsets):
            raise BrowseError("a context's tokens and ci_values differ in length")
        contexts = Contexts(offsets, ids, ci)
    return Grouped(columns, spans, contexts)


@dataclass
class Harvest:
    """Everything the browser shows, read from one harvest step folder."""

    path: Path
    settings: dict[str, Any]
    summary: dict[str, Any]
    vocab: dict[int, str]
    components: Grouped
    top_contexts: Grouped
    reservoir: Grouped
    input_tokens: Grouped
    output_tokens: Grouped
    coactivation: Grouped
    sites: list[str] = field(default_factory=list)
    ablation: Grouped | None = None  # None without `param-decomp ablate`
    ablation_tokens: Grouped | None = None
    ablation_meta: dict[str, Any] = field(default_factory=dict)

    def site_components(self, site: str) -> list[int]:
        """The component indices of a site that components.parquet lists, ascending."""
        return [c for s, c in self.components.spans if s == site]

    def ablation_row(self, key: Key) -> tuple[str, int] | None:
        """(sample, row in `ablation`) shown for a component: its reservoir sample (uniform over
        its firing tokens) when it has one, else its top contexts; None when not ablated."""
        if self.ablation is None:
            return None
        rows = {self.ablation.columns["sample"][i]: i for i in self.ablation.rows(key)}
        sample = next((s for s in SAMPLES if s in rows), None)
        return None if sample is None else (sample, rows[sample])


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BrowseError(f"{path} is missing: the harvest is incomplete")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_parquet(folder: Path, name: str) -> pa.Table:
    """The columns the browser reads, or a BrowseError naming the file and what is wrong."""
    path = folder / f"{name}.parquet"
    if not path.is_file():
        raise BrowseError(f"{path} is missing: the harvest is incomplete")
    columns = COLUMNS.get(name) or OPTIONAL[name]
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise BrowseError(f"{path} cannot be read: {err}") from err
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise BrowseError(f"{path} lacks the columns {missing}")
    return table.select(list(columns))


def load_harvest(run_dir: Path, step: int | None = None) -> Harvest:
    """Read the newest (or the given) harvest step of a run folder."""
    folder = harvest_step_dir(run_dir, step)
    settings = _read_json(folder / "settings.json")
    summary = _read_json(folder / "summary.json")
    tables = {name: _read_parquet(folder, name) for name in COLUMNS}
    vocab_table = tables.pop("vocab")
    vocab = dict(
        zip(
            vocab_table.column("token").to_pylist(),
            vocab_table.column("text").to_pylist(),
            strict=True,
        )
    )
    ablation: dict[str, Any] = {}
    if (folder / ABLATION_MARKER).is_file():
        ablation = {
            "ablation_meta": _read_json(folder / ABLATION_MARKER),
            "ablation": group(_read_parquet(folder, "ablation"), order=("sample",)),
            "ablation_tokens": group(
                _read_parquet(folder, "ablation_tokens"), order=("sample", "direction", "rank")
            ),
        }
    components = group(tables["components"], order=())
    sites = list(summary.get("sites", {}))
    sites += sorted({s for s, _ in components.spans} - set(sites))
    return Harvest(
        path=folder,
        settings=settings,
        summary=summary,
        vocab=vocab,
        components=components,
        top_contexts=group(tables["top_contexts"]),
        reservoir=group(tables["reservoir"]),
        input_tokens=group(tables["input_tokens"], order=("by", "rank")),
        output_tokens=group(tables["output_tokens"], order=("direction", "rank")),
        coactivation=group(tables["coactivation"]),
        sites=sites,
        **ablation,
    )
