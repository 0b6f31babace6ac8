"""S6A.6 + S11.4: a persistent PGD adversary resumes through a checkpoint bit for bit. Its own
file (three CLI runs, in this process through `cli_runner.run_cli`), so pytest-xdist's --dist
loadfile can run it beside the rest of tests/losses/test_pgd.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from cli_runner import REPO
from cli_runner import run_cli as _cli

pytestmark = pytest.mark.runs_long(seconds=25)

FIXTURES = REPO / "tests" / "fixtures"


def _config(tmp_path: Path, steps: int) -> Path:
    cfg = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    cfg["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    cfg["losses"] = [
        {"type": "faithfulness", "coeff": 1.0},
        {"type": "importance_minimality", "coeff": 3.0e-3, "pnorm": 1.0},
        {"type": "stochastic_recon", "coeff": 1.0},
        {"type": "persistent_pgd_recon", "coeff": 1.0, "lr": 0.05, "n_warmup_steps": 1},
    ]
    cfg["train"].update(steps=steps, batch_size=64, log_every=1)
    cfg["train"]["faithfulness_warmup"]["steps"] = 2
    cfg["eval"] = {"n_batches": 1, "batch_size": 64, "figures": False}
    cfg["checkpointing"] = {"every": 100, "keep": 2}
    path = tmp_path / f"toy{steps}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _restore_item(checkpoints: Path, item: str) -> dict:
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(checkpoints) as manager:
        restored = manager.restore(
            manager.latest_step(), args=ocp.args.Composite(**{item: ocp.args.StandardRestore()})
        )
    return restored[item]


def test_s6a_6_persistent_adversary_resumes_exactly(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    """3 steps, checkpoint, --resume to 6 == 6 uninterrupted steps (S11.4), adversary included."""
    trained_targets(tmp_path / "a", FIXTURES / "tms_tiny_target.yaml")
    straight = _cli("decompose", str(_config(tmp_path, 6)), "--runs-dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    shutil.copytree(tmp_path / "a" / "targets", tmp_path / "b" / "targets")
    first = _cli("decompose", str(_config(tmp_path, 3)), "--runs-dir", str(tmp_path / "b"))
    assert first.returncode == 0, first.stderr[-3000:]
    cfg6 = _config(tmp_path, 6)
    resumed = _cli("decompose", str(cfg6), "--runs-dir", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 3" in resumed.stdout

    def records(root: str) -> list[dict]:
        text = (tmp_path / root / "tms_tiny" / "metrics.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    a, b = records("a"), records("b")
    train_keys = [k for k in a[0] if k.startswith("train/")]
    assert "train/loss/persistent_pgd_recon" in train_keys
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        for k in train_keys:
            assert abs(x[k] - y[k]) <= 1e-6 * max(abs(y[k]), 1e-12), (x["step"], k)
    ta = _restore_item(tmp_path / "a" / "tms_tiny" / "checkpoints", "training")
    tb = _restore_item(tmp_path / "b" / "tms_tiny" / "checkpoints", "training")
    assert "adversary" in ta
    assert int(np.asarray(ta["step"])) == 6
    for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
