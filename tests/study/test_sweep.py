"""S19: `param-decomp sweep`, a grid of decomposition configs. Dotted-key overrides name list
elements by their `type`; a cell's record holds the per-site L0 share its eval.json implies;
a second invocation runs nothing; a cell whose record is lost continues from its checkpoint;
the Pareto figure, the curves and the table are written; a typo fails before anything runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cli_runner import REPO, run_cli

from param_decomp.config.errors import ConfigError
from param_decomp.study.overrides import with_overrides
from param_decomp.study.sweep_schema import load_sweep

pytestmark = pytest.mark.runs_long(seconds=20)

FIXTURES = REPO / "tests" / "fixtures"


def test_s19_1_dotted_overrides_find_list_elements_by_type() -> None:
    base = {
        "losses": [{"type": "faithfulness", "coeff": 1.0}, {"type": "smooth_l0", "coeff": 0.1}],
        "train": {"steps": 10},
    }
    out = with_overrides(
        base,
        {
            "losses.smooth_l0.coeff": 0.5,
            "losses.smooth_l0.density_target": {"l0_frac": 0.05},
            "losses.0.coeff": 2.0,
            "train.steps": 20,
            "eval.every": 5,  # a block the base lacks is created
        },
    )
    assert out["losses"][1] == {
        "type": "smooth_l0", "coeff": 0.5, "density_target": {"l0_frac": 0.05}
    }  # fmt: skip
    assert out["losses"][0]["coeff"] == 2.0 and out["train"]["steps"] == 20
    assert out["eval"] == {"every": 5}
    assert base["losses"][1] == {"type": "smooth_l0", "coeff": 0.1}  # the base is untouched
    assert [t["type"] for t in with_overrides(base, {"losses.faithfulness": None})["losses"]] == [
        "smooth_l0"
    ]
    with pytest.raises(KeyError, match="no element of type 'importance_minimality'"):
        with_overrides(base, {"losses.importance_minimality.coeff": 1.0})


def _sweep(tmp_path: Path, cells: list[dict]) -> Path:
    base = yaml.safe_load((FIXTURES / "llama_micro.yaml").read_text())
    base["target"] = str(FIXTURES / "llama_micro_target.yaml")
    base["train"].update(steps=4, log_every=2)
    base["eval"]["every"] = 2
    base["checkpointing"] = {"every": 2, "keep": 2}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": "tiny",
        "base": "base.yaml",  # relative to the sweep's folder
        "cells": cells,
        "report": {
            "markdown": str(tmp_path / "docs" / "tiny.md"),
            "plot": str(tmp_path / "docs" / "figures" / "tiny.png"),
            "title": "tiny sweep",
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_s19_1_a_typo_in_a_cell_fails_at_load(tmp_path: Path) -> None:
    path = _sweep(tmp_path, [{"name": "bad", "overrides": {"losses.importance.coeff": 1.0}}])
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert "cells[0] (bad)" in str(err.value) and "smooth_l0" in str(err.value)


def test_s19_2_records_skip_continue_and_render(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    runs = trained_targets(tmp_path / "runs", FIXTURES / "llama_micro_target.yaml")
    density = {"l0_frac": 0.25, "dual_lr": 0.05}
    path = _sweep(
        tmp_path,
        [
            {"name": "plain", "note": "the fixture's objective"},
            {"name": "dens", "overrides": {"losses.smooth_l0.density_target": density}},
        ],
    )
    first = run_cli("sweep", str(path), "--runs-dir", str(runs), "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 cells, 0 done, 2 to run" in first.stdout

    for cell in ("plain", "dens"):
        record = json.loads((runs / "sweeps" / "tiny" / f"{cell}.json").read_text())
        saved = json.loads((runs / f"tiny__{cell}" / "eval.json").read_text())
        assert record["status"] == "done" and record["steps"] == 4
        for site, figures in record["sites"].items():
            assert figures["C"] == saved["C"][site] == 8
            l0 = saved["fast_tier"][f"eval/ci_l0/{site}"]
            assert figures["l0_share"] == pytest.approx(l0 / 8)
        assert record["max_l0_share"] == max(v["l0_share"] for v in record["sites"].values())
        assert list(record["layers"]) == ["layers.0"]
        assert record["rounded_unrecovered"] == pytest.approx(
            saved["fast_tier"]["eval/ce_unrecovered/rounded_ci>0.1"]
        )
        assert [h["step"] for h in record["history"]] == [2, 4]
        cell_yaml = yaml.safe_load(Path(record["config_yaml"]).read_text())
        assert cell_yaml["run_name"] == f"tiny__{cell}"
    dens_yaml = yaml.safe_load((runs / "sweeps/tiny/configs/dens.yaml").read_text())
    assert dens_yaml["losses"][1]["density_target"] == density
    metrics = (runs / "tiny__dens" / "metrics.jsonl").read_text()
    assert "train/density/multiplier/layers.0.mlp.up" in metrics

    md = (tmp_path / "docs" / "tiny.md").read_text()
    assert "| plain | 4 |" in md and "| dens | 4 |" in md and "the fixture's objective" in md
    assert (tmp_path / "docs/figures/tiny.png").stat().st_size > 0
    assert (tmp_path / "docs/figures/tiny_curves.png").stat().st_size > 0
    assert "](figures/tiny.png)" in md

    again = run_cli("sweep", str(path), "--runs-dir", str(runs), "--quiet")
    assert again.returncode == 0 and "2 cells, 2 done, 0 to run" in again.stdout

    # the record of a cell lost (its run stopped after a checkpoint): it continues, not restarts
    (runs / "sweeps" / "tiny" / "dens.json").unlink()
    shutil.rmtree(runs / "tiny__dens" / "checkpoints" / "4")
    resumed = run_cli("sweep", str(path), "--runs-dir", str(runs), "--only", "dens", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 2" in resumed.stdout
    assert json.loads((runs / "sweeps/tiny/dens.json").read_text())["started"] == "continued"

    # a run started from another config is set aside, never deleted, and the cell starts again
    (runs / "sweeps" / "tiny" / "dens.json").unlink()
    saved_cfg = yaml.safe_load((runs / "tiny__dens" / "config.yaml").read_text())
    saved_cfg["seed"] = 99
    (runs / "tiny__dens" / "config.yaml").write_text(yaml.safe_dump(saved_cfg))
    redone = run_cli("sweep", str(path), "--runs-dir", str(runs), "--only", "dens", "--quiet")
    assert redone.returncode == 0, redone.stderr[-3000:]
    aside = runs / "tiny__dens.superseded-1"
    assert f"set aside as {aside}" in redone.stdout
    assert (aside / "checkpoints" / "4").is_dir()  # what it held is kept
    assert yaml.safe_load((aside / "config.yaml").read_text())["seed"] == 99
    assert json.loads((runs / "sweeps/tiny/dens.json").read_text())["started"] == "fresh"

    unknown = run_cli("sweep", str(path), "--runs-dir", str(runs), "--only", "nope")
    assert unknown.returncode == 2 and "no such cell" in unknown.stderr
