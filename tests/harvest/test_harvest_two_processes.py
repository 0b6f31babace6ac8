"""Two real processes (one CPU device each, one 2-device mesh over gloo) harvest a run and write
the tables one process writes: the multi-process path of `param-decomp harvest` (each process
feeds its slice of every batch, progress saves gather on every process, only process 0 writes).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from processes import free_port, run_together, xla_flags
from test_harvest_statistics import ATOL, _cli_args, _tables, _worst_error

import param_decomp.harvest as harvest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.runs_long(seconds=25)
def test_two_processes_harvest_the_tables_of_one(harvest_run: Path, tmp_path: Path) -> None:
    runs = {}
    for name in ("one", "two"):  # private copies: the other tests' harvests stay untouched
        runs[name] = tmp_path / name / harvest_run.name
        shutil.copytree(harvest_run, runs[name], ignore=shutil.ignore_patterns("harvest", "browse"))
    args = [*_cli_args(), "--runs-dir", str(harvest_run.parent), "--no-progress", "--save-every=3"]
    out = run_cli("harvest", str(runs["one"]), *args)
    assert out.returncode == 0, out.stderr
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    distributed = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    run_together(
        [
            [sys.executable, "-m", "param_decomp.cli", "harvest", str(runs["two"]), *args]
            + [*distributed, "--process-id", str(pid)]
            for pid in range(2)
        ],
        cwd=REPO,
        env=env,
    )
    one, two = harvest.load(runs["one"]), harvest.load(runs["two"])
    assert two.summary["tokens"] == one.summary["tokens"]
    assert not (two.folder / "progress").exists()  # the progress state went with the finish
    tables_one, tables_two = _tables(one), _tables(two)
    for name, table in tables_one.items():
        worst_abs, worst_rel = _worst_error(tables_two[name], table)
        assert worst_abs <= ATOL and worst_rel <= 1e-3, (name, worst_abs, worst_rel)
