"""S19.3: a cell not finished (a long run spanning sessions, or one stopped) shows its curve
so far: dashed on the curves, one table row of its latest evaluation, never on the Pareto
figure nor counted done; a run folder started from another config is not shown. No training:
the run folder is written as the decompose job writes it (config.yaml, metrics.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_runner import REPO

from param_decomp.study.pareto import done_records, render
from param_decomp.study.sweep import progress_record
from param_decomp.study.sweep_schema import load_sweep

FIXTURES = REPO / "tests" / "fixtures"
SITES = ("layers.0.attn.v", "layers.0.mlp.up", "layers.0.mlp.down")


def _sweep(tmp_path: Path) -> Path:
    base = yaml.safe_load((FIXTURES / "llama_micro.yaml").read_text())
    base["target"] = str(FIXTURES / "llama_micro_target.yaml")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": "tiny",
        "base": "base.yaml",
        "cells": [{"name": "long", "note": "a long run", "overrides": {"train.steps": 1000}}],
        "report": {
            "markdown": str(tmp_path / "docs" / "tiny.md"),
            "plot": str(tmp_path / "docs" / "tiny.png"),
            "title": "tiny sweep",
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _eval_row(step: int, l0: float) -> dict:
    row = {"step": step, "eval/ce_unrecovered/rounded_ci>0.1": 0.5 - step / 1000}
    row |= {f"eval/ci_l0/{s}": l0 for s in SITES}
    return row | {"eval/carried/layers.0": 0.4 + step / 1000}


def test_s19_3_an_unfinished_cell_is_drawn_dashed_and_tabled_not_counted(tmp_path: Path) -> None:
    path = _sweep(tmp_path)
    sweep = load_sweep(path)
    (cell,) = sweep.cells
    runs = tmp_path / "runs"
    run = runs / cell.run_name
    run.mkdir(parents=True)
    assert progress_record(cell, runs) is None  # nothing logged yet
    (run / "config.yaml").write_text(yaml.safe_dump(cell.config.model_dump(mode="json")))
    rows = [_eval_row(100, 4.0), {"step": 150, "train/loss/total": 1.0}, _eval_row(200, 2.0)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    record = progress_record(cell, runs)
    assert record is not None and record["status"] == "in_progress"
    assert record["step"] == 200 and record["steps"] == 1000
    C = cell.config.decomposition.C  # every site of the fixture uses decomposition.C
    assert [h["step"] for h in record["history"]] == [100, 200]
    assert record["history"][-1]["max_l0_share"] == 2.0 / C
    assert record["history"][-1]["min_carried"] == pytest.approx(0.6)

    md_path, _, curves = render(sweep, runs, "sweep.yaml")
    md = md_path.read_text()
    assert "(0 of 1 cells done)" in md
    assert "| long | 1000 | unfinished (step 200 of 1000); at step 200:" in md
    assert f"max site L0 share {2.0 / C:.3f}" in md and "min carried 0.600" in md
    assert curves.stat().st_size > 0

    # a run folder started from another config is not this cell's progress
    other = cell.config.model_dump(mode="json")
    other["train"]["batch_size"] += 1
    (run / "config.yaml").write_text(yaml.safe_dump(other))
    assert progress_record(cell, runs) is None
    assert done_records(sweep, runs) == []
