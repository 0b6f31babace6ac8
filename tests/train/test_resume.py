"""Issue 10 acceptance 1-3 (S11.4-S11.6): exact resume after SIGTERM in a real subprocess,
corrupted checkpoints, the NaN stop keeping the last good checkpoint, and run-folder refusals.

The run that is killed is a separate process (the signal is the point); the uninterrupted,
refused and resumed runs go through the same `main` in this process (`cli_runner.run_cli`)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_runner import REPO, cli_command, run_cli

from param_decomp.train.run_loop import EXIT_PREEMPTED, EXIT_USAGE

pytestmark = pytest.mark.runs_long(seconds=55)

FIXTURES = REPO / "tests" / "fixtures"
REL = 1e-6


_cli = cli_command
_run = run_cli


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps_logged(path: Path) -> int:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.strip().endswith("}")]
    return max(steps, default=0)


def _kill_at_random_step(args: list[str], metrics: Path, lo: int, hi: int) -> int:
    """Start the command, SIGTERM it once metrics.jsonl reaches a random step in [lo, hi];
    return that step (the run itself stops at the end of the step it is in)."""
    kill_at = random.randint(lo, hi)
    print(f"SIGTERM at step {kill_at}")
    proc = subprocess.Popen(_cli(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _steps_logged(metrics) < kill_at:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    err_text = err.decode()
    assert proc.returncode == EXIT_PREEMPTED, err_text[-3000:]
    assert "--resume" in err_text and "Traceback" not in err_text
    return kill_at


def _worst_rel(a: list[dict], b: list[dict]) -> float:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if k != "step":
                worst = max(worst, abs(x[k] - y[k]) / max(abs(y[k]), 1e-12))
    return worst


def _restore_item(checkpoints: Path, item: str) -> dict:
    """A saved item as nested numpy arrays, read without knowing the run's structure."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(checkpoints) as manager:
        step = manager.latest_step()
        restored = manager.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()})
        )
    return restored[item]


def _assert_equal_trees(a: object, b: object) -> None:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _toy_config(tmp_path: Path, steps: int, checkpoint_every: int = 25) -> Path:
    """TMS with the frequency term and subset routing on, logging every step."""
    cfg = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    cfg["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    cfg["losses"] = [
        {"type": "faithfulness", "coeff": 1.0},
        {
            "type": "importance_minimality",
            "coeff": 3.0e-3,
            "pnorm": 1.0,
            "frequency": {"coeff": 1.0e-3, "reference_token_count": 1024},
        },
        {"type": "stochastic_recon", "coeff": 1.0},
        {"type": "stochastic_recon_subset", "coeff": 1.0},
    ]
    cfg["train"].update(steps=steps, batch_size=2048, log_every=1)
    cfg["checkpointing"] = {"every": checkpoint_every, "keep": 3}
    cfg["eval"]["figures"] = False  # not what these tests check; it costs each run seconds
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_toy_decomposition_resumes_exactly_after_sigterm(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    # 100 steps: a step costs the same CPU at any batch size here (dispatch and the per-step
    # log dominate), so the run's length is what costs; the kill still lands between
    # checkpoints (every 25) with 40+ steps to spare
    config = _toy_config(tmp_path, steps=100)
    trained_targets(tmp_path / "a", FIXTURES / "tms_tiny_target.yaml")
    straight = _run("decompose", str(config), "--runs-dir", str(tmp_path / "a"), "--no-progress")
    assert straight.returncode == 0, straight.stderr[-3000:]
    # --no-progress hides only the progress bar: the summary table still prints
    assert "alive" in straight.stdout and "linear1" in straight.stdout
    assert "it/s" not in straight.stdout + straight.stderr
    runs_b = tmp_path / "b"
    metrics_b = runs_b / "tms_tiny" / "metrics.jsonl"
    args = ["decompose", str(config), "--runs-dir", str(runs_b), "--no-progress"]
    # the same cached target for b, so b starts at once
    shutil.copytree(tmp_path / "a" / "targets", runs_b / "targets")
    _kill_at_random_step(args, metrics_b, 20, 60)
    refused = _run(*args)  # without --resume an existing run folder is refused
    assert refused.returncode == EXIT_USAGE and "--resume" in refused.stderr
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    a = _records(tmp_path / "a" / "tms_tiny" / "metrics.jsonl")
    b = _records(metrics_b)
    assert len(a) == 100 and _worst_rel(b, a) <= REL
    for item in ("decomposition", "training"):
        _assert_equal_trees(
            _restore_item(tmp_path / "a" / "tms_tiny" / "checkpoints", item),
            _restore_item(runs_b / "tms_tiny" / "checkpoints", item),
        )


def _lm_config(tmp_path: Path, steps: int) -> Path:
    cfg = yaml.safe_load((FIXTURES / "llama_micro_target.yaml").read_text())
    cfg["train"].update(steps=steps, log_every=1, eval_every=100, batch_size=32)
    cfg["checkpointing"] = {"every": 50, "keep": 2}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_lm_pretraining_resumes_exactly_after_sigterm(tmp_path: Path) -> None:
    """Including the grain pipeline's position: the resumed run sees the same batches."""
    config = _lm_config(tmp_path, steps=200)
    straight = _run("pretrain", str(config), "--runs-dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    runs_b = tmp_path / "b"
    metrics_b = runs_b / "targets" / "llama_micro" / "metrics.jsonl"
    args = ["pretrain", str(config), "--runs-dir", str(runs_b)]
    _kill_at_random_step(args, metrics_b, 20, 140)
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _records(tmp_path / "a" / "targets" / "llama_micro" / "metrics.jsonl")
    b = _records(metrics_b)
    assert len(a) == 201 and _worst_rel(b, a) <= REL  # step 0 eval + 200 steps
    for item in ("model", "training"):
        _assert_equal_trees(
            _restore_item(tmp_path / "a" / "targets" / "llama_micro" / "checkpoints", item),
            _restore_item(runs_b / "targets" / "llama_micro" / "checkpoints", item),
        )
