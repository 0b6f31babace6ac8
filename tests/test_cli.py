"""The `param-decomp` command line as a user runs it (issue 3 acceptance 5, S11): the decompose
run as a separate process of the console entry point; the rest through the same `main` in
this process (`cli_runner.run_cli`)."""

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cli_runner import REPO, cli_command, run_cli

pytestmark = pytest.mark.runs_long(seconds=35)

TINY = REPO / "tests" / "fixtures" / "tms_tiny.yaml"
_cli = run_cli


def test_every_subcommand_has_help() -> None:
    """Read from the parser itself, so a new command cannot be missed."""
    from param_decomp.cli import build_parser

    parser = build_parser()
    (sub_action,) = [a for a in parser._actions if a.dest == "command"]
    subs = sorted(sub_action.choices)
    assert {"decompose", "eval", "harvest", "browse", "export", "reproduce"} <= set(subs)
    for sub in subs:
        out = _cli(sub, "--help")
        assert out.returncode == 0 and "usage: param-decomp " + sub in out.stdout, sub


def test_decompose_writes_run_folder_table_and_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    argv = cli_command("decompose", str(TINY), "--runs-dir", str(tmp_path))
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "training it first" in out.stdout  # target trained and cached on first use
    # summary table: per-site alive counts and the eval losses
    assert (
        "alive" in out.stdout and "linear1" in out.stdout and "eval/loss/faithfulness" in out.stdout
    )
    run = tmp_path / "tms_tiny"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    for key in (
        "train/loss/faithfulness",
        "train/loss/stochastic_recon",
        "train/loss/total",
        "train/imp_min/p",
    ):
        assert key in records[-1]
    assert yaml.safe_load((run / "config.yaml").read_text())["run_name"] == "tms_tiny"
    for fig in ("causal_importance.png", "components.png"):
        data = (run / "figures" / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [
        "20",
        "40",
    ]
    assert (tmp_path / "targets" / "tms_tiny_target" / "checkpoints").is_dir()
    summary = json.loads((run / "eval.json").read_text())
    assert set(summary["alive"]) == {"linear1", "linear2"}
    # S11.7: without a `logging` block nothing of wandb is written, neither in the run
    # folders nor in $WANDB_DIR
    assert [p for p in tmp_path.rglob("*") if "wandb" in p.name] == []


def test_s11_1_nonfinite_loss_stops_with_step_and_term(
    tmp_path: Path, trained_targets: Callable[..., Path]
) -> None:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["target"] = str(REPO / cfg["target"])
    cfg["train"]["optimizer"]["lr"] = 1.0e30
    cfg["train"]["faithfulness_warmup"] = {"steps": 0}
    bad = tmp_path / "nan.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    runs = trained_targets(tmp_path / "runs", REPO / cfg["target"])
    out = _cli("decompose", str(bad), "--runs-dir", str(runs))
    assert out.returncode == 1, out.stderr[-2000:]
    assert "non-finite loss at step" in out.stderr and "train/loss/" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_goldens_cli_reports_each_case_and_exit_status(
    goldens_dir: Path, tmp_path: Path
) -> None:
    """The in-process suite checks every golden; here the CLI contract on two files."""
    for name in ("faithfulness.json", "schedules.json"):
        (tmp_path / name).write_text((goldens_dir / name).read_text())
    out = _cli("check-goldens", str(tmp_path))
    assert out.returncode == 0, out.stdout[-2000:]
    assert out.stdout.count("PASS") == 6 and "6/6 cases passed" in out.stdout
    data = json.loads((goldens_dir / "faithfulness.json").read_text())
    data["cases"][0]["expected"]["loss"] = float(data["cases"][0]["expected"]["loss"]) + 1.0
    (tmp_path / "faithfulness.json").write_text(json.dumps(data))
    out = _cli("check-goldens", str(tmp_path))
    assert out.returncode == 1 and "FAIL" in out.stdout and "5/6 cases passed" in out.stdout
