"""A study's run JSONs reduced to per-cell numbers: means, spread over seeds, curves and the
comparison with the cell's baseline (SPEC S16.3). Only JSONs made from the current resolved
config count; a stale one is treated like a missing one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.study.grid import read_record, record_matches, record_path
from param_decomp.study.schema import Cell, Study


@dataclass(frozen=True)
class Spread:
    """Mean over seeds, sample standard deviation (n - 1; None for one seed) and min-max."""

    mean: float
    std: float | None
    lo: float
    hi: float
    n: int

    @staticmethod
    def of(values: list[float]) -> Spread | None:
        if not values:
            return None
        arr = np.asarray(values, dtype=np.float64)
        std = float(np.std(arr, ddof=1)) if len(arr) > 1 else None
        return Spread(float(arr.mean()), std, float(arr.min()), float(arr.max()), len(arr))


@dataclass(frozen=True)
class Curve:
    """Val bpb per evaluated step: mean and min-max over the seeds that finished."""

    steps: list[int]
    mean: list[float]
    lo: list[float]
    hi: list[float]


@dataclass(frozen=True)
class CellResult:
    cell: Cell
    group: str
    objective: str
    records: list[dict[str, Any]]  # finished runs, in seed order
    missing: list[int]  # seeds without a current JSON
    diverged: list[int]  # seeds whose loss turned non-finite
    bpb: Spread | None
    ce: Spread | None
    wall: Spread | None
    curve: Curve | None
    cpu: Spread | None = None  # CPU seconds; absent from runs recorded before it was kept


@dataclass(frozen=True)
class Comparison:
    """The cell's mean val bpb minus its baseline's; `within_spread` is None below two seeds
    on either side (no spread to compare with)."""

    delta: float
    within_spread: bool | None


def describe_objective(cfg: PretrainConfig) -> str:
    """The training objective of a resolved config in words, e.g. 'CE + label smoothing 0.1'."""
    obj = cfg.objective
    parts = [
        {
            "cross_entropy": "CE",
            "focal": f"focal γ={obj.gamma:g}",
            "bytes_weighted_ce": "bytes-weighted CE",
            "poly1": f"poly1 ε={obj.epsilon:g}",
        }[obj.kind]
    ]
    if obj.label_smoothing > 0:
        parts.append(f"label smoothing {obj.label_smoothing:g}")
    if obj.z_loss > 0:
        parts.append(f"z-loss {obj.z_loss:g}")
    if cfg.model.logit_soft_cap is not None:
        parts.append(f"soft-cap {cfg.model.logit_soft_cap:g}")
    return " + ".join(parts)


def _curve(records: list[dict[str, Any]]) -> Curve | None:
    """Steps evaluated in every finished run (they share the schedule unless a cell changed
    eval_every), with mean and min-max of val bpb over those runs."""
    if not records:
        return None
    per_run = [{h["step"]: h["val_bpb"] for h in r["history"]} for r in records]
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    values = np.asarray([[p[s] for s in steps] for p in per_run], dtype=np.float64)
    return Curve(
        steps,
        values.mean(axis=0).tolist(),
        values.min(axis=0).tolist(),
        values.max(axis=0).tolist(),
    )


def summarise(study: Study, runs_dir: Path) -> list[CellResult]:
    """One result per cell, in config order."""
    results = []
    for cell in study.config.cells:
        runs = study.runs_of(cell)
        finished, missing, diverged = [], [], []
        for run in runs:
            record = read_record(record_path(study, run, runs_dir))
            if not record_matches(record, run):
                missing.append(run.seed)
            elif record.get("status") != "done":
                diverged.append(run.seed)
            else:
                finished.append(record)
        results.append(
            CellResult(
                cell=cell,
                group=study.group_of(cell),
                objective=describe_objective(runs[0].config),
                records=finished,
                missing=missing,
                diverged=diverged,
                bpb=Spread.of([r["final_val_bpb"] for r in finished]),
                ce=Spread.of([r["final_val_ce_nats"] for r in finished]),
                wall=Spread.of([r["train_wall_s"] for r in finished]),
                cpu=Spread.of([r["train_cpu_s"] for r in finished if "train_cpu_s" in r]),
                curve=_curve(finished),
            )
        )
    return results


def compare(result: CellResult, baseline: CellResult) -> Comparison | None:
    """Mean difference in val bpb, and whether it lies within the seed spread: the two cells'
    min-max ranges over seeds overlap (S16.3)."""
    a, b = result.bpb, baseline.bpb
    if a is None or b is None:
        return None
    within = None if min(a.n, b.n) < 2 else (a.lo <= b.hi and b.lo <= a.hi)
    return Comparison(a.mean - b.mean, within)
