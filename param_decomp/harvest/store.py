"""The on-disk form of a harvest, `RUN_DIR/harvest/step_<N>/`, and `load` for notebooks.

| file | holds |
|---|---|
| `settings.json` | the exact settings (`HarvestSettings` plus step, threshold, corpus, tokenizer) |
| `summary.json` | step, tokens harvested, split, threshold, per site C, alive count, L0 |
| `vocab.parquet`, `token_counts.parquet` | token -> text; token -> count in the harvest |
| `components.parquet` | firing counts and densities (CI > threshold, CI > 0), mean CI |
| `top_contexts.parquet`, `reservoir.parquet` | contexts with the component's CI per token |
| `input_tokens.parquet`, `output_tokens.parquet` | tokens fired on; tokens written toward |
| `coactivation.parquet` | top partners per component with precision, recall, Jaccard |
| `progress/state.npz` | while running: the state after the last saved batch (for --resume) |
| `ablation.parquet`, `ablation_tokens.parquet` | `param-decomp ablate`: removing each component |
| `ablation.json` | the ablation's settings and timing, written after its tables |

`summary.json` is written last: a folder without it is an unfinished harvest. Likewise
`ablation.json` marks finished ablation tables (optional: only after `param-decomp ablate`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TABLES = (
    "vocab",
    "token_counts",
    "components",
    "top_contexts",
    "reservoir",
    "input_tokens",
    "output_tokens",
    "coactivation",
)
ABLATION_TABLES = ("ablation", "ablation_tokens")
SUMMARY = "summary.json"
ABLATION = "ablation.json"
SETTINGS = "settings.json"
PROGRESS = Path("progress") / "state.npz"


def harvest_root(run_dir: Path) -> Path:
    return Path(run_dir) / "harvest"


def step_dir(run_dir: Path, step: int) -> Path:
    return harvest_root(run_dir) / f"step_{step}"


def finished_steps(run_dir: Path) -> list[int]:
    """Checkpoint steps with a finished harvest, ascending."""
    root = harvest_root(run_dir)
    if not root.is_dir():
        return []
    steps = [
        int(p.name.removeprefix("step_"))
        for p in root.glob("step_*")
        if p.name.removeprefix("step_").isdigit() and (p / SUMMARY).is_file()
    ]
    return sorted(steps)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_tables(folder: Path, tables: dict[str, pa.Table], settings: dict, summary: dict) -> None:
    """Every table, the settings, then the summary (its presence marks the harvest finished)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUMMARY).unlink(missing_ok=True)
    _write_json(folder / SETTINGS, settings)
    for name in TABLES:
        pq.write_table(tables[name], folder / f"{name}.parquet")
    _write_json(folder / SUMMARY, summary)


def write_ablation(folder: Path, tables: dict[str, pa.Table], meta: dict) -> None:
    """The ablation tables, then `ablation.json` (its presence marks them finished)."""
    (folder / ABLATION).unlink(missing_ok=True)
    for name in ABLATION_TABLES:
        pq.write_table(tables[name], folder / f"{name}.parquet")
    _write_json(folder / ABLATION, meta)


def clear(folder: Path) -> None:
    """Remove a previous harvest of this step (tables and progress)."""
    shutil.rmtree(folder, ignore_errors=True)


def save_progress(
    folder: Path, settings: dict, batches_done: int, state: dict[str, np.ndarray]
) -> None:
    """The state after `batches_done` batches, in one file replaced atomically: a kill at any
    moment leaves the previous save or this one, never half of either."""
    path = folder / PROGRESS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"state.{os.getpid()}.tmp.npz")
    meta = json.dumps({"settings": settings, "batches_done": batches_done})
    np.savez(tmp, __meta__=np.frombuffer(meta.encode(), np.uint8), **state)
    os.replace(tmp, path)


def load_progress(folder: Path) -> tuple[dict, int, dict[str, np.ndarray]] | None:
    """(settings, batches done, state) of the last save, or None when there is none."""
    path = folder / PROGRESS
    if not path.is_file():
        return None
    with np.load(path) as saved:
        meta = json.loads(saved["__meta__"].tobytes().decode())
        state = {k: saved[k] for k in saved.files if k != "__meta__"}
    return meta["settings"], int(meta["batches_done"]), state


def remove_progress(folder: Path) -> None:
    shutil.rmtree((folder / PROGRESS).parent, ignore_errors=True)


@dataclass(frozen=True)
class Harvest:
    """A finished harvest as pyarrow tables (`table.to_pylist()`, `.column(...)`,
    `pyarrow.compute` filters; no pandas needed)."""

    folder: Path
    settings: dict[str, Any]
    summary: dict[str, Any]
    vocab: pa.Table
    token_counts: pa.Table
    components: pa.Table
    top_contexts: pa.Table
    reservoir: pa.Table
    input_tokens: pa.Table
    output_tokens: pa.Table
    coactivation: pa.Table
    ablation: pa.Table | None = None  # None until `param-decomp ablate` has run
    ablation_tokens: pa.Table | None = None


def load(run_dir: str | Path, step: int | None = None) -> Harvest:
    """The harvest of checkpoint `step` of the run in `run_dir` (default: the latest step that
    has a finished harvest)."""
    run_dir = Path(run_dir)
    steps = finished_steps(run_dir)
    if not steps:
        raise FileNotFoundError(f"{harvest_root(run_dir)} holds no finished harvest")
    if step is None:
        step = steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no finished harvest of step {step} in {run_dir}; have {steps}")
    folder = step_dir(run_dir, step)
    tables = {name: pq.read_table(folder / f"{name}.parquet") for name in TABLES}
    if (folder / ABLATION).is_file():
        tables |= {name: pq.read_table(folder / f"{name}.parquet") for name in ABLATION_TABLES}
    return Harvest(
        folder,
        json.loads((folder / SETTINGS).read_text()),
        json.loads((folder / SUMMARY).read_text()),
        **tables,
    )
