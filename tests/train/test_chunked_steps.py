"""S11.8: a job with a chunk function runs from boundary to boundary in one dispatch each,
to the same numbers as one dispatch per step, and resumes exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from param_decomp.runconfig.any_config import load_any_config
from param_decomp.train import run_loop
from param_decomp.train.run_loop import Job, chunk_end

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _job(**kw: object) -> Job:
    base = dict(name="j", run_dir=Path("."), config={}, resume_hint="", steps=95, state=None)
    base |= dict(step_fn=None, checkpoint_items=None, from_checkpoint=None, log_every=10)
    return Job(**(base | kw))  # type: ignore[arg-type]


def test_s11_8_chunk_ends_are_the_steps_the_loop_acts_on(monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(checkpoint_every=25, eval_every=40, evaluate=lambda s: {})
    ends, step = [], 0
    while step < job.steps:
        step = chunk_end(job, step)
        ends.append(step)
    assert ends == [10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 95]
    assert chunk_end(job, 23) == 25  # a resumed run's first chunk ends where a straight run's does
    monkeypatch.setattr(run_loop, "MAX_CHUNK", 7)
    assert chunk_end(_job(log_every=100), 0) == 7 and chunk_end(_job(log_every=100), 7) == 14


def _train(tmp: Path, steps: int, resume: bool = False) -> list[np.ndarray]:
    from param_decomp.jobs.train_target import train_target

    raw = yaml.safe_load((FIXTURES / "tms_tiny_target.yaml").read_text())
    raw["train"] |= {"steps": steps, "log_every": 10}
    raw["checkpointing"] = {"every": 20, "keep": 5}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "target.yaml"
    path.write_text(yaml.safe_dump(raw))
    model = train_target(load_any_config(path), tmp, log=False, resume=resume)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _losses(tmp: Path) -> list[float]:
    lines = (tmp / "targets" / "tms_tiny_target" / "metrics.jsonl").read_text().splitlines()
    return [yaml.safe_load(line)["train/loss"] for line in lines]


def test_s11_8_chunked_equals_per_step_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked = _train(tmp_path / "chunked", 60)
    monkeypatch.setattr(run_loop, "MAX_CHUNK", 1)  # one dispatch per step
    per_step = _train(tmp_path / "per_step", 60)
    monkeypatch.undo()
    for a, b in zip(chunked, per_step, strict=True):
        np.testing.assert_array_equal(a, b)
    assert _losses(tmp_path / "chunked") == _losses(tmp_path / "per_step")
    # stopped after step 40: the resumed run continues to the same numbers
    shutil.copytree(tmp_path / "chunked", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "targets" / "tms_tiny_target" / "checkpoints" / "60")
    resumed = _train(tmp_path / "resumed", 60, resume=True)
    for a, b in zip(chunked, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "chunked")
