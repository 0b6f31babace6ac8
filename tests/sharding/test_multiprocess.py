"""Issue 5 acceptance 2: two real processes x 2 CPU devices form one 4-device mesh (gloo) and
reproduce the single-process 4-device trajectory to rel <= 1e-5."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from processes import TIMEOUT_S, free_port, run_together, xla_flags
from test_mesh_invariance import REL, _worst_rel, trajectory
from trajectory_problem import MESHES, toy_problem

pytestmark = pytest.mark.runs_long(seconds=120)

WORKER = Path(__file__).with_name("multiprocess_worker.py")


def _as_arrays(tree: object) -> object:
    """JSON lists and numpy leaves alike, under string keys, so both sides flatten the same."""
    if isinstance(tree, dict):
        return {str(k): _as_arrays(v) for k, v in tree.items()}
    return np.asarray(tree, np.float64)


TWO_PROCESS_MESHES = ["data4", "data2_tensor2"]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both meshes' trajectories from ONE pair of worker processes (2 x 2 CPU devices)."""
    out = tmp_path_factory.mktemp("two_processes") / "trajectories.json"
    port = free_port()
    meshes = ",".join(TWO_PROCESS_MESHES)
    run_together(
        [
            [sys.executable, str(WORKER), str(port), str(pid), "2", str(out), meshes]
            for pid in range(2)
        ]
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("mesh_name", TWO_PROCESS_MESHES)
def test_two_processes_reproduce_single_process_trajectory(
    two_process_runs: dict, mesh_name: str
) -> None:
    assert two_process_runs["devices"] == 4
    got = two_process_runs["runs"][mesh_name]
    ref_history, ref_params = trajectory(toy_problem(), *MESHES[mesh_name])
    loss_rel = _worst_rel(got["history"], ref_history)
    param_rel = _worst_rel(_as_arrays(got["params"]), _as_arrays(ref_params))
    print(f"2 processes, {mesh_name}: worst rel err losses {loss_rel:.2e}, params {param_rel:.2e}")
    assert loss_rel <= REL and param_rel <= REL, (loss_rel, param_rel)


def test_cli_decompose_runs_as_two_processes(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    """`param-decomp decompose --coordinator ...` on 2 processes x 2 CPU devices: one 4-device
    mesh; only process 0 writes metrics and figures, the figure tier at step 4 (both processes
    take part in its host copy, S14.7) and at the end. The fixture's run shrunk to 8 steps
    (its warmup, logging and checkpoints in proportion): the same tiers, logs and saves."""
    repo = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((repo / "tests" / "fixtures" / "tms_tiny.yaml").read_text())
    cfg["train"].update(steps=8, log_every=2)
    cfg["train"]["faithfulness_warmup"]["steps"] = 4
    cfg["checkpointing"]["every"] = 4
    cfg["eval"]["figures_every"] = 4
    config = tmp_path / "tms_tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    trained_targets(tmp_path, repo / "tests" / "fixtures" / "tms_tiny_target.yaml")
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    run_together(
        [
            [
                sys.executable,
                "-m",
                "param_decomp.cli",
                "decompose",
                str(config),
                "--runs-dir",
                str(tmp_path),
                "--no-progress",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(pid),
            ]
            for pid in range(2)
        ],
        cwd=repo,
        env=env,
    )
    run = tmp_path / "tms_tiny"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # written once (process 0), not once per process
    assert (run / "figures" / "causal_importance.png").is_file()
    for step in (4, 8):
        assert (run / "figures" / f"step_{step}" / "activation_density.png").is_file()
    assert json.loads((run / "eval.json").read_text())["alive"].keys() == {"linear1", "linear2"}


def test_sigterm_to_one_process_stops_both_at_the_same_step(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    """S11.6: a signal to process 0 only; both processes agree on the stop step, save one
    collective checkpoint there and exit 75; `--resume` on both finishes the run."""
    import signal
    import time

    repo = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((repo / "tests" / "fixtures" / "tms_tiny.yaml").read_text())
    raw["target"] = str(repo / "tests" / "fixtures" / "tms_tiny_target.yaml")
    raw["train"].update(steps=100_000, log_every=1)
    raw["checkpointing"] = {"every": 0, "keep": 2}
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(raw))
    trained_targets(tmp_path, repo / "tests" / "fixtures" / "tms_tiny_target.yaml")
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    port = free_port()

    def command(pid: int, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "param_decomp.cli", "decompose", str(config),
            "--runs-dir", str(tmp_path), "--no-progress", "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", str(pid), *extra,
        ]  # fmt: skip

    procs = [
        subprocess.Popen(
            command(p), cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for p in range(2)
    ]
    metrics = tmp_path / "tms_tiny" / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 5):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errs = [o[1].decode() for o in outs]
    assert [p.returncode for p in procs] == [75, 75], "\n---\n".join(errs)[-4000:]
    stops = [int(e.split("stopped by signal after step ")[1].split(";")[0]) for e in errs]
    assert stops[0] == stops[1]
    steps = sorted(
        int(p.name) for p in (tmp_path / "tms_tiny" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps == [stops[0]]
