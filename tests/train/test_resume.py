"""Issue 10 acceptance 1-3 (S11.4-S11.6): exact resume after SIGTERM in a real subprocess,
corrupted checkpoints, the NaN stop keeping the last good checkpoint, and run-folder refusals."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from param_decomp.train.run_loop import EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
REL = 1e-6


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "param_decomp.cli", *args]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), cwd=REPO, capture_output=True, text=True, timeout=600)


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


def _toy_config(tmp_path: Path, steps: int) -> Path:
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
    cfg["checkpointing"] = {"every": 25, "keep": 3}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_toy_decomposition_resumes_exactly_after_sigterm(tmp_path: Path) -> None:
    config = _toy_config(tmp_path, steps=300)
    straight = _run("decompose", str(config), "--runs-dir", str(tmp_path / "a"), "--no-progress")
    assert straight.returncode == 0, straight.stderr[-3000:]
    # --no-progress hides only the progress bar: the summary table still prints
    assert "alive" in straight.stdout and "linear1" in straight.stdout
    assert "it/s" not in straight.stdout + straight.stderr
    runs_b = tmp_path / "b"
    metrics_b = runs_b / "tms_tiny" / "metrics.jsonl"
    args = ["decompose", str(config), "--runs-dir", str(runs_b), "--no-progress"]
    # the target is trained (and cached) by the first run of b; copy it so b starts at once
    shutil.copytree(tmp_path / "a" / "targets", runs_b / "targets")
    _kill_at_random_step(args, metrics_b, 20, 200)
    refused = _run(*args)  # without --resume an existing run folder is refused
    assert refused.returncode == EXIT_USAGE and "--resume" in refused.stderr
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    a = _records(tmp_path / "a" / "tms_tiny" / "metrics.jsonl")
    b = _records(metrics_b)
    assert len(a) == 300 and _worst_rel(b, a) <= REL
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
    config = _lm_config(tmp_path, steps=400)
    straight = _run("pretrain", str(config), "--runs-dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    runs_b = tmp_path / "b"
    metrics_b = runs_b / "targets" / "llama_micro" / "metrics.jsonl"
    args = ["pretrain", str(config), "--runs-dir", str(runs_b)]
    _kill_at_random_step(args, metrics_b, 20, 300)
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _records(tmp_path / "a" / "targets" / "llama_micro" / "metrics.jsonl")
    b = _records(metrics_b)
    assert len(a) == 401 and _worst_rel(b, a) <= REL  # step 0 eval + 400 steps
    for item in ("model", "training"):
        _assert_equal_trees(
            _restore_item(tmp_path / "a" / "targets" / "llama_micro" / "checkpoints", item),
            _restore_item(runs_b / "targets" / "llama_micro" / "checkpoints", item),
        )


def _truncate_step(step_dir: Path) -> None:
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            with f.open("r+b") as handle:
                handle.truncate(f.stat().st_size // 2)


def test_corrupted_newest_step_falls_back_and_says_so(tmp_path: Path) -> None:
    config = _toy_config(tmp_path, steps=100)
    runs = tmp_path / "runs"
    args = ["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = runs / "tms_tiny" / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [50, 75, 100]
    good = _restore_item(ckpts, "decomposition")
    _truncate_step(ckpts / "100")
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint step 100" in resumed.stderr and "unusable" in resumed.stderr
    assert "resumed from step 75" in resumed.stdout
    assert (runs / "tms_tiny" / "corrupt_checkpoints" / "100").is_dir()  # kept, set aside
    _assert_equal_trees(_restore_item(ckpts, "decomposition"), good)  # 75 -> 100 again
    # nothing usable at all: the error names every step and why
    for step in (50, 75, 100):
        _truncate_step(ckpts / str(step))
    broken = _run(*args, "--resume")
    assert broken.returncode == EXIT_USAGE, broken.stderr[-3000:]
    assert "no usable checkpoint" in broken.stderr and "step 50" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_nan_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    cfg["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    cfg["train"]["optimizer"] = {"lr": 1.0e30, "schedule": {"kind": "constant"}}
    cfg["train"]["faithfulness_warmup"] = {"steps": 0}
    cfg["train"]["log_every"] = 10
    cfg["checkpointing"] = {"every": 1, "keep": 3}
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = _run("decompose", str(path), "--runs-dir", str(tmp_path), "--no-progress")
    assert out.returncode == EXIT_NONFINITE, out.stderr[-3000:]
    assert "non-finite loss at step" in out.stderr and "train/loss/" in out.stderr
    assert "Traceback" not in out.stderr
    ckpts = tmp_path / "tms_tiny" / "checkpoints"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    bad_step = int(out.stderr.split("non-finite loss at step ")[1].split(":")[0])
    assert steps and max(steps) < bad_step  # never a checkpoint of the NaN state
    restored = _restore_item(ckpts, "decomposition")
    import jax

    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored))


def test_resume_refuses_a_changed_config_and_a_missing_run(tmp_path: Path) -> None:
    config = _toy_config(tmp_path, steps=30)
    runs = tmp_path / "runs"
    args = ["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]
    missing = _run(*args, "--resume")
    assert missing.returncode == EXIT_USAGE and "has no checkpoints" in missing.stderr
    assert _run(*args).returncode == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["decomposition"]["C"] = 16
    cfg["train"]["steps"] = 60  # may change
    config.write_text(yaml.safe_dump(cfg))
    changed = _run(*args, "--resume")
    assert changed.returncode == EXIT_USAGE
    assert "decomposition.C: saved 8, requested 16" in changed.stderr
    assert "train.steps" not in changed.stderr.split("requested")[-1]
    replaced = _run(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]


def test_unwritable_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file_not_dir"
    blocker.write_text("")
    out = _run("decompose", str(_toy_config(tmp_path, 10)), "--runs-dir", str(blocker))
    assert out.returncode == EXIT_USAGE
    assert "cannot write to the run folder" in out.stderr and "Traceback" not in out.stderr
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = _run("decompose", str(_toy_config(tmp_path, 10)), "--runs-dir", str(locked))
        assert out.returncode == EXIT_USAGE and "cannot write" in out.stderr


def test_a_signal_during_set_up_stops_without_a_checkpoint() -> None:
    """In set-up (e.g. the faithfulness warm-up) a signal stops at once, nothing saved."""
    from param_decomp.train.run_loop import STOP, Preempted

    with pytest.raises(Preempted, match="during set-up") as err, STOP.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert err.value.step is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM)
    )
