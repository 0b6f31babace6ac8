"""`param-decomp study` (SPEC S16): a two-cell grid of a tiny byte-level Llama runs, writes one
JSON per run, renders the markdown and the PNG, skips done runs and re-runs a changed cell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from param_decomp.cli import main
from param_decomp.config.errors import ConfigError
from param_decomp.study.grid import record_matches, run_grid
from param_decomp.study.render import render
from param_decomp.study.schema import load_study
from param_decomp.study.summary import CellResult, Spread, compare

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "run_name": "unused",
    "model": {
        "type": "llama",
        "vocab_size": 256,
        "d_model": 16,
        "n_heads": 2,
        "d_mlp": 32,
        "n_layers": 1,
        "seq_len": 16,
    },
    "data": {"tokenizer": "byte", "max_val_windows": 16},
    "train": {
        "steps": 8,
        "batch_size": 8,
        "optimizer": {"lr": 1e-2},
        "log_every": 4,
        "eval_every": 4,
    },
}


def _study(tmp_path: Path, focal_gamma: float = 2.0) -> dict[str, Any]:
    return {
        "name": "tiny",
        "base": BASE,
        "seeds": [0, 1],
        "cells": [
            {"name": "ce", "baseline": True},
            {
                "name": "focal",
                "seeds": [0],
                "overrides": {"objective": {"kind": "focal", "gamma": focal_gamma}},
                "published": [
                    {"claim": "focal hurt by +0.028 bpb (example)", "direction": "worse"}
                ],
            },
        ],
        "report": {
            "markdown": str(tmp_path / "docs" / "study.md"),
            "plot": str(tmp_path / "docs" / "study.png"),
            "title": "Tiny study",
            "caveats": "A fixed caveat paragraph.",
        },
    }


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.json"))}


def test_study_runs_renders_skips_done_and_reruns_only_a_changed_cell(tmp_path: Path) -> None:
    """S16.1-S16.3: one JSON per (cell, seed); table, plot and comparison rendered; a second
    invocation trains nothing; changing one cell's config re-runs exactly that cell."""
    path = _write(tmp_path, _study(tmp_path))
    runs = tmp_path / "runs"
    assert main(["study", str(path), "--runs-dir", str(runs), "--quiet"]) == 0

    folder = runs / "studies" / "tiny"
    names = ["ce__seed0", "ce__seed1", "focal__seed0"]
    assert sorted(_mtimes(folder)) == [f"{n}.json" for n in names]
    records = {n: json.loads((folder / f"{n}.json").read_text()) for n in names}
    ce0 = records["ce__seed0"]
    assert ce0["status"] == "done" and ce0["steps"] == 8 and ce0["tokens"] == 8 * 8 * 16
    assert [h["step"] for h in ce0["history"]] == [0, 4, 8]
    assert ce0["final_val_bpb"] == ce0["history"][-1]["val_bpb"]
    assert ce0["machine"]["jax_backend"] == "cpu" and ce0["machine"]["cpu_cores"] >= 1
    assert ce0["train_wall_s"] > 0
    assert records["focal__seed0"]["overrides"] == {"objective": {"kind": "focal", "gamma": 2.0}}
    # Validation is plain CE + bpb whatever the objective: same seed, same init, same step-0
    # numbers; the seed changes the init.
    assert records["focal__seed0"]["history"][0] == ce0["history"][0]
    assert records["ce__seed1"]["history"][0] != ce0["history"][0]
    assert records["focal__seed0"]["final_val_bpb"] != ce0["final_val_bpb"]
    assert not (folder / "runs" / "ce__seed0" / "checkpoints").exists()  # disposable

    md = (tmp_path / "docs" / "study.md").read_text()
    png = tmp_path / "docs" / "study.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](study.png)" in md
    ce_bpb = [records[f"ce__seed{s}"]["final_val_bpb"] for s in (0, 1)]
    mean, std = np.mean(ce_bpb), np.std(ce_bpb, ddof=1)
    assert f"| `ce` (baseline) | CE | {mean:.4f} ± {std:.4f} |" in md
    assert f"0: {ce_bpb[0]:.4f}, 1: {ce_bpb[1]:.4f}" in md
    assert "focal γ=2" in md and "focal hurt by +0.028 bpb (example)" in md
    assert "A fixed caveat paragraph." in md and "sample standard deviation" in md
    assert "## What the runs show" in md
    assert f"reaches {mean:.4f} val bpb (seeds {min(ce_bpb):.4f}–{max(ce_bpb):.4f})" in md
    assert "Not yet comparable (fewer than two seeds): `focal`" in md  # focal has one seed

    # Second invocation: nothing trains, the write-up is rendered again.
    before = _mtimes(folder)
    png.unlink()
    (tmp_path / "docs" / "study.md").unlink()
    study = load_study(path)
    assert run_grid(study, runs, show_progress=False).ran == []
    render(study, runs)
    assert _mtimes(folder) == before
    assert png.is_file() and (tmp_path / "docs" / "study.md").read_text() == md

    # A changed cell definition re-runs only that cell.
    path = _write(tmp_path, _study(tmp_path, focal_gamma=1.0))
    outcome = run_grid(load_study(path), runs, show_progress=False)
    assert outcome.ran == ["focal__seed0"]
    assert outcome.skipped == ["ce__seed0", "ce__seed1"]
    after = _mtimes(folder)
    assert {k: after[k] for k in ("ce__seed0.json", "ce__seed1.json")} == {
        k: before[k] for k in ("ce__seed0.json", "ce__seed1.json")
    }


def _result(name: str, values: list[float], baseline: bool = False) -> CellResult:
    from param_decomp.study.schema import Cell

    spread = Spread.of(values)
    return CellResult(
        Cell(name=name, baseline=baseline), "g", "CE", [], [], [], spread, None, None, None
    )


def test_spread_and_within_spread_rule() -> None:
    """S16.3: sample std (n - 1), min-max; 'within the seed spread' = the ranges overlap."""
    s = Spread.of([1.0, 2.0, 4.0])
    assert s is not None and s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1)) and (s.lo, s.hi) == (1, 4)
    assert Spread.of([1.5]).std is None  # type: ignore[union-attr]
    base = _result("ce", [1.10, 1.12, 1.11], baseline=True)
    overlapping = compare(_result("a", [1.115, 1.13, 1.14]), base)
    assert overlapping is not None and overlapping.within_spread is True
    apart = compare(_result("b", [1.13, 1.14, 1.15]), base)
    assert apart is not None and apart.within_spread is False
    assert apart.delta == pytest.approx(0.03)
    assert compare(_result("c", [1.2]), base).within_spread is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (lambda r: r["cells"][0].update(baseline=False), "cells", "exactly one `baseline: true`"),
        (
            lambda r: r["cells"][1]["overrides"].update(seed=3),
            "cells[1].overrides",
            "may not set ['seed']",
        ),
        (
            lambda r: r["cells"][1]["overrides"].update(
                data={"tokenizer": {"kind": "sentencepiece", "vocab_size": 512}}
            ),
            "cells[1] (focal, base + overrides) model.vocab_size",
            "tokenizer",
        ),
        (lambda r: r.update(base="missing.yaml"), "base", "not found"),
        (lambda r: r["cells"].append({"name": "ce"}), "", "cell names must be unique"),
    ],
)
def test_study_config_errors_name_the_key(
    tmp_path: Path, edit: Any, key: str, fragment: str
) -> None:
    """S11.2 for study configs: every (cell, seed) is resolved and checked before any run."""
    raw = _study(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError) as err:
        load_study(_write(tmp_path, raw))
    assert any(k.startswith(key) and fragment in m for k, m in err.value.problems), (
        err.value.problems
    )
    assert not (tmp_path / "runs").exists()


def test_s16_2_a_key_added_since_at_its_default_keeps_a_run_done() -> None:
    """S16.2: a record counts for a run when its stored config equals today's resolved one; a
    config key added since the record was written (absent from it) keeps the run done while
    it holds its default, and not once the run sets it."""
    import dataclasses

    run = load_study(REPO / "configs" / "studies" / "objectives.yaml").runs[0]
    stored = run.config.model_dump(mode="json")
    assert record_matches({"config": stored}, run)
    del stored["train"]["optimizer"]["moment_dtype"]  # as written before the key existed
    assert record_matches({"config": stored}, run)
    optimizer = run.config.train.optimizer.model_copy(update={"moment_dtype": "bfloat16"})
    train = run.config.train.model_copy(update={"optimizer": optimizer})
    bf16 = dataclasses.replace(run, config=run.config.model_copy(update={"train": train}))
    assert not record_matches({"config": stored}, bf16)
    stored["train"]["steps"] += 1
    assert not record_matches({"config": stored}, run)
    assert not record_matches(None, run) and not record_matches({"config": "x"}, run)
