"""A small LM decomposition run folder for the harvest tests: the micro Llama fixture target
(pretrained once per test process by `trained_targets`) and a decomposition checkpoint of its
sites written directly (freshly initialised, seed 0), so no training step is compiled here."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from param_decomp.jobs.decompose import load_target, new_decomposition
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.train.checkpoint import RunCheckpoints

sys.path.insert(0, str(Path(__file__).parent))  # lets the tests import harvest_reference

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
RUN_STEP = 7  # the checkpoint step the folder holds


def write_run(runs_dir: Path, name: str = "llama_micro") -> Path:
    """`runs_dir/<name>/checkpoints/<RUN_STEP>/` with items `decomposition` and `config`, as a
    decomposition run saves them; the target must already be cached in `runs_dir`."""
    cfg = load_decompose_config(FIXTURES / f"{name}.yaml")
    _, target = load_target(cfg, name, runs_dir)
    _, params = nnx.split(new_decomposition(cfg, target))
    run_dir = runs_dir / cfg.run_name
    checkpoints = RunCheckpoints(run_dir / "checkpoints", async_save=False)
    items = {"decomposition": jax.tree.map(np.asarray, params)}
    checkpoints.save(RUN_STEP, items, None, cfg.model_dump(mode="json"), wait=True)
    checkpoints.close()
    return run_dir


@pytest.fixture(scope="session")
def harvest_run(
    tmp_path_factory: pytest.TempPathFactory, trained_targets: Callable[..., Path]
) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # the fixtures name their targets relative to the repository
        runs = trained_targets(
            tmp_path_factory.mktemp("runs"), FIXTURES / "llama_micro_target.yaml"
        )
        yield write_run(runs)
