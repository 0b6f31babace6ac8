"""Issue 10 acceptance 2-3 and the run-folder rules (S11.4-S11.6): corrupted checkpoints,
the NaN stop keeping the last good checkpoint, refusals, unwritable folders, set-up signals."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_resume import FIXTURES, _assert_equal_trees, _restore_item, _run, _toy_config

from param_decomp.train.run_loop import EXIT_NONFINITE, EXIT_USAGE

pytestmark = pytest.mark.runs_long(seconds=50)


def _truncate_step(step_dir: Path) -> None:
    for f in step_dir.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            with f.open("r+b") as handle:
                handle.truncate(f.stat().st_size // 2)


def test_corrupted_newest_step_falls_back_and_says_so(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    # checkpoints every 20 of 60 steps, the newest three kept: 20, 40, 60
    config = _toy_config(tmp_path, steps=60, checkpoint_every=20)
    runs = trained_targets(tmp_path / "runs", FIXTURES / "tms_tiny_target.yaml")
    args = ["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = runs / "tms_tiny" / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [20, 40, 60]
    good = _restore_item(ckpts, "decomposition")
    _truncate_step(ckpts / "60")
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint step 60" in resumed.stderr and "unusable" in resumed.stderr
    assert "resumed from step 40" in resumed.stdout
    assert (runs / "tms_tiny" / "corrupt_checkpoints" / "60").is_dir()  # kept, set aside
    _assert_equal_trees(_restore_item(ckpts, "decomposition"), good)  # 40 -> 60 again
    # nothing usable at all: the error names every step and why
    for step in (20, 40, 60):
        _truncate_step(ckpts / str(step))
    broken = _run(*args, "--resume")
    assert broken.returncode == EXIT_USAGE, broken.stderr[-3000:]
    assert "no usable checkpoint" in broken.stderr and "step 20" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_nan_stops_naming_the_term_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    trained_targets(tmp_path, FIXTURES / "tms_tiny_target.yaml")
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


def test_resume_refuses_a_changed_config_and_a_missing_run(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    config = _toy_config(tmp_path, steps=10)
    runs = trained_targets(tmp_path / "runs", FIXTURES / "tms_tiny_target.yaml")
    args = ["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]
    missing = _run(*args, "--resume")
    assert missing.returncode == EXIT_USAGE and "has no checkpoints" in missing.stderr
    assert _run(*args).returncode == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["decomposition"]["C"] = 16
    cfg["train"]["steps"] = 20  # may change
    config.write_text(yaml.safe_dump(cfg))
    changed = _run(*args, "--resume")
    assert changed.returncode == EXIT_USAGE
    assert "decomposition.C: saved 8, requested 16" in changed.stderr
    assert "train.steps" not in changed.stderr.split("requested")[-1]
    replaced = _run(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]


def test_s11_4_a_target_is_compared_by_its_file_not_its_path(tmp_path: Path) -> None:
    """A checkout moved or cloned elsewhere records the same target under another absolute
    path; resume accepts it when the file holds the same config, and refuses another target."""
    from param_decomp.train.run_dir import config_differences

    here, there, other = tmp_path / "a" / "t.yaml", tmp_path / "b" / "t.yaml", tmp_path / "o.yaml"
    for path, text in ((here, "run_name: t\nseed: 0\n"), (there, "seed: 0\nrun_name: t\n"),
                       (other, "run_name: t\nseed: 1\n")):  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    saved = {"target": str(here), "seed": 0}
    assert config_differences(saved, {"target": str(there), "seed": 0}) == []
    assert config_differences(saved, {"target": str(other), "seed": 0}) == [
        f"target: saved {str(here)!r}, requested {str(other)!r}"
    ]
    gone = {"target": str(tmp_path / "moved_away.yaml"), "seed": 0}
    assert len(config_differences(gone, {"target": str(there), "seed": 0})) == 1


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


def test_a_second_signal_aborts_at_once(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    """S11.6: SIGTERM then SIGINT (two signal numbers, so Python cannot fold them into one)
    in the loop: exit 130 at once, without the stop-and-save of the first signal."""
    import subprocess

    from test_resume import REPO, _cli, _steps_logged

    from param_decomp.train.run_loop import EXIT_ABORTED

    # the config of the corrupted-checkpoint test above, so the process loads that test's
    # compiled step from the run's XLA cache; it is signalled at step 5 of 60
    config = _toy_config(tmp_path, steps=60, checkpoint_every=20)
    runs = trained_targets(tmp_path / "runs", FIXTURES / "tms_tiny_target.yaml")
    args = ["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]
    proc = subprocess.Popen(_cli(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _steps_logged(runs / "tms_tiny" / "metrics.jsonl") < 5:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_ABORTED, err.decode()[-2000:]
    assert "aborting now" in err.decode()
