"""Running a sweep: every cell whose record is missing or stale is decomposed (continued from
its checkpoint where one exists) and summarised into `<runs-dir>/sweeps/<sweep>/<cell>.json`
(SPEC S19.2): per site C, L0 and its share of C; per layer the L0 share, carried and whether
carried applies (S14.13); the whole model's `ce_unrecovered` per mask; the eval history for
the long-run curves; wall and CPU time, commit and machine.

The run folder is a normal decomposition run (`<runs-dir>/<sweep>__<cell>/`), kept, so its
components can be harvested and browsed; the cell's resolved YAML is written beside the record
so `param-decomp decompose` can rerun it alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from param_decomp.decomposition.sites import resolve_sites, site_layers
from param_decomp.study.grid import read_record, write_json
from param_decomp.study.provenance import commit, machine
from param_decomp.study.sweep_schema import PlannedCell, Sweep
from param_decomp.train.run_dir import (
    RunDirError,
    config_differences,
    has_checkpoints,
    set_aside,
)
from param_decomp.train.run_loop import NonFiniteLossError

RECORD_FORMAT = 1
MASKS = ("ci", "rounded_ci>0.1", "stochastic", "pgd")


def sweep_dir(sweep: Sweep, runs_dir: Path) -> Path:
    return Path(runs_dir) / "sweeps" / sweep.config.name


def record_path(sweep: Sweep, cell: PlannedCell, runs_dir: Path) -> Path:
    return sweep_dir(sweep, runs_dir) / f"{cell.cell.name}.json"


def is_done(sweep: Sweep, cell: PlannedCell, runs_dir: Path) -> bool:
    record = read_record(record_path(sweep, cell, runs_dir))
    return record is not None and record.get("config_hash") == cell.config_hash


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def layer_view(fast: dict[str, Any], C: dict[str, int]) -> tuple[dict, dict]:
    """(per site, per layer) figures of one fast-tier dict (S19.2)."""
    sites = {}
    for site, c in C.items():
        l0 = float(fast[f"eval/ci_l0/{site}"])
        sites[site] = {"C": c, "l0": l0, "l0_share": l0 / c}
    layers = {}
    for layer, members in site_layers(list(C)).items():
        applicable = fast.get(f"eval/carry_applicable/{layer}", 1.0) != 0.0
        layers[layer] = {
            "sites": list(members),
            "l0_share": sum(sites[s]["l0_share"] for s in members) / len(members),
            "max_l0_share": max(sites[s]["l0_share"] for s in members),
            "carried": _finite(fast.get(f"eval/carried/{layer}")),
            "carry_applicable": applicable,
            "carry_gap": _finite(fast.get(f"eval/carry_gap/{layer}")),
        }
    return sites, layers


def summary_figures(sites: dict, layers: dict, fast: dict[str, Any]) -> dict[str, Any]:
    """The three acceptance figures: the densest site's L0 share, the least-carried layer that
    is judged, and the rounded mask's unrecovered share of the ablation gap."""
    judged = [v["carried"] for v in layers.values() if v["carry_applicable"]]
    return {
        "max_l0_share": max(v["l0_share"] for v in sites.values()),
        "min_carried": min((c for c in judged if c is not None), default=None),
        "rounded_unrecovered": _finite(fast.get("eval/ce_unrecovered/rounded_ci>0.1")),
    }


def eval_history(metrics_path: Path, C: dict[str, int]) -> list[dict[str, Any]]:
    """Every evaluation the run logged (metrics.jsonl): step, the summary figures and the
    per-layer L0 share and carried, for the long-run curves."""
    if not metrics_path.is_file():
        return []
    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    return history_of(rows, C)


def history_of(rows: list[dict[str, Any]], C: dict[str, int]) -> list[dict[str, Any]]:
    """`eval_history` of metrics rows already read."""
    history = []
    for row in rows:
        if not all(f"eval/ci_l0/{s}" in row for s in C):
            continue
        sites, layers = layer_view(row, C)
        history.append(
            {"step": row["step"]}
            | summary_figures(sites, layers, row)
            | {
                "layers": {
                    k: {"l0_share": v["l0_share"], "carried": v["carried"]}
                    for k, v in layers.items()
                }
            }
        )
    return history


def progress_record(cell: PlannedCell, runs_dir: Path) -> dict[str, Any] | None:
    """A cell not done whose run folder, started from this cell's config, has logged
    evaluations: its curve so far (S19.3), so a long run spanning sessions shows where it
    stands. C per site comes from the cell's `sites` entries; the target is compared by file
    name (the run may have been started from another checkout). The caller knows the cell is
    not done (`done_records` has just read its record)."""
    run_dir = Path(runs_dir) / cell.run_name
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    except (OSError, ValueError, yaml.YAMLError):
        return None
    wanted = cell.config.model_dump(mode="json")
    if Path(str(saved.get("target"))).name != Path(str(wanted.get("target"))).name:
        return None
    skip = {"run_name", "target"}
    if config_differences({k: v for k, v in saved.items() if k not in skip},
                          {k: v for k, v in wanted.items() if k not in skip}):  # fmt: skip
        return None
    evals = [r for r in rows if any(k.startswith("eval/ci_l0/") for k in r)]
    if not evals:
        return None
    sites = [k.removeprefix("eval/ci_l0/") for k in evals[0] if k.startswith("eval/ci_l0/")]
    C = resolve_sites(cell.config.decomposition, sites)
    return {
        "cell": cell.cell.name,
        "note": cell.cell.note,
        "status": "in_progress",
        "steps": cell.config.train.steps,
        "step": max(int(r.get("step", 0)) for r in rows),
        "history": history_of(rows, C),
    }


def _decompose(cell: PlannedCell, yaml_path: Path, runs_dir: Path, quiet: bool) -> str:
    """Run (or continue) the cell's decomposition; returns how it started."""
    from param_decomp.jobs.decompose import run_decompose

    run_dir = Path(runs_dir) / cell.run_name
    if has_checkpoints(run_dir):
        try:
            run_decompose(cell.config, str(yaml_path), runs_dir, not quiet, resume=True)
            return "continued"
        except RunDirError as err:  # started from another config: set it aside, start again
            aside = set_aside(run_dir)
            print(
                f"  cannot continue ({str(err).splitlines()[0]}); set aside as {aside}, "
                "starting afresh",
                flush=True,
            )
    run_decompose(cell.config, str(yaml_path), runs_dir, not quiet, overwrite=True)
    return "fresh"


def run_cell(sweep: Sweep, cell: PlannedCell, runs_dir: Path, quiet: bool) -> dict[str, Any]:
    """Decompose one cell and write its record; a non-finite loss is recorded as diverged."""
    folder = sweep_dir(sweep, runs_dir)
    yaml_path = folder / "configs" / f"{cell.cell.name}.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(cell.yaml_text())
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "sweep": sweep.config.name,
        "cell": cell.cell.name,
        "note": cell.cell.note,
        "overrides": cell.cell.overrides,
        "config_hash": cell.config_hash,
        "run_name": cell.run_name,
        "config_yaml": str(yaml_path),
        "steps": cell.config.train.steps,
        "commit": commit(),
        "machine": machine(),
    }
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        record["started"] = _decompose(cell, yaml_path, runs_dir, quiet)
        record["status"] = "done"
    except NonFiniteLossError as err:
        record["status"] = "diverged"
        record["error"] = str(err)
    record["wall_s"] = time.perf_counter() - start  # this invocation's part only
    record["cpu_s"] = time.process_time() - cpu_start
    record["load_average_1m_at_end"] = os.getloadavg()[0]
    run_dir = Path(runs_dir) / cell.run_name
    if record["status"] == "done":
        saved = json.loads((run_dir / "eval.json").read_text())
        fast, C = saved["fast_tier"], saved["C"]
        sites, layers = layer_view(fast, C)
        record |= {"sites": sites, "layers": layers} | summary_figures(sites, layers, fast)
        record["unrecovered"] = {m: _finite(fast.get(f"eval/ce_unrecovered/{m}")) for m in MASKS}
        record["history"] = eval_history(run_dir / "metrics.jsonl", C)
    write_json(record_path(sweep, cell, runs_dir), record)
    return record


def run_sweep(
    sweep: Sweep, runs_dir: Path, only: list[str] | None = None, quiet: bool = False
) -> list[str]:
    """Decompose every cell (or those named in `only`) not done, in config order; returns the
    cells it ran."""
    sweep_dir(sweep, runs_dir).mkdir(parents=True, exist_ok=True)
    chosen = [c for c in sweep.cells if only is None or c.cell.name in only]
    todo = [c for c in chosen if not is_done(sweep, c, runs_dir)]
    print(
        f"sweep {sweep.config.name}: {len(chosen)} cells, {len(chosen) - len(todo)} done, "
        f"{len(todo)} to run",
        flush=True,
    )
    for i, cell in enumerate(todo, 1):
        print(f"sweep {sweep.config.name}: [{i}/{len(todo)}] {cell.cell.name}", flush=True)
        record = run_cell(sweep, cell, runs_dir, quiet)
        if record["status"] == "done":
            carried, unrec = record["min_carried"], record["rounded_unrecovered"]
            print(
                f"  {cell.cell.name}: max L0 share {record['max_l0_share']:.3f}, min carried "
                f"{'n/a' if carried is None else f'{carried:.3f}'}, rounded unrecovered "
                f"{'n/a' if unrec is None else f'{unrec:.3f}'}, {record['wall_s']:.0f} s",
                flush=True,
            )
        else:
            print(f"  {cell.cell.name}: diverged ({record['error']})", flush=True)
    return [c.cell.name for c in todo]
