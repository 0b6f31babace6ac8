"""Optional Weights & Biases logging (SPEC S11.7), offline only: nothing reaches the network."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from wandb_records import offline_runs, read_offline_run, run_config

from param_decomp.cli import main
from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import load_target_config
from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.config.schema import WandbLogging
from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.train import loggers, run_loop
from param_decomp.train.loggers import WANDB_RUN_ID_FILE, NoLogger, WandbLogger
from param_decomp.train.run_loop import EXIT_PREEMPTED, EXIT_USAGE, Job, Preempted, job_logging

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
OFFLINE = {"project": "test", "mode": "offline", "tags": ["ci", "tiny"]}


@pytest.fixture
def wandb_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """wandb quiet, offline, and writing only under tmp_path (its settings and caches too)."""
    folder = tmp_path / "wandb_dir"
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return folder


def _configs(tmp_path: Path, wandb: dict | None, steps: int = 20) -> Path:
    """The tiny TMS decomposition (and its target) with `logging.wandb` added to both files."""
    target = yaml.safe_load((FIXTURES / "tms_tiny_target.yaml").read_text())
    cfg = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    if wandb is not None:
        target["logging"] = cfg["logging"] = {"wandb": wandb}
    target_path = tmp_path / "target.yaml"
    target_path.write_text(yaml.safe_dump(target))
    target["train"].update(steps=20, log_every=10)
    cfg["target"] = str(target_path)
    cfg["losses"] = cfg["losses"][:3]  # fewer terms, less to compile
    cfg["train"].update(steps=steps, log_every=5, faithfulness_warmup={"steps": 0})
    cfg["eval"]["every"] = 10
    cfg["checkpointing"] = {"every": 0, "keep": 1}
    path = tmp_path / "tms.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_history_has(history: dict[int, dict], records: list[dict]) -> None:
    """Every metrics.jsonl record is in the wandb history at its step, with its values."""
    assert records
    for record in records:
        row = history[record["step"]]
        for key, value in record.items():
            if key != "step":
                assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (record["step"], key)


def test_s11_7_decomposition_logs_metrics_and_figures_offline(
    tmp_path: Path, wandb_dir: Path
) -> None:
    """Target training and decomposition each make one offline wandb run: the config and run
    name, every metrics.jsonl record at its training step, the end-of-run losses and alive
    counts, and both figures (the very PNG files of the run folder) at the last step."""
    path = _configs(tmp_path, OFFLINE)
    cfg = load_decompose_config(path)
    runs = tmp_path / "runs"
    run_decompose(cfg, str(path), runs, show_progress=False)

    run_dir = runs / "tms_tiny"
    run_id = (run_dir / WANDB_RUN_ID_FILE).read_text().strip()
    (folder,) = offline_runs(wandb_dir, run_id)
    run = read_offline_run(folder)
    assert run.run.display_name == "tms_tiny" and list(run.run.tags) == ["ci", "tiny"]
    assert run_config(run)["train"] == cfg.model_dump(mode="json")["train"]
    # wandb's service writes the exit record after the history it flushes on finish; on a
    # loaded machine it has been missing from the offline file (the exit code itself is checked
    # where it matters, 75 for a preempted run, in the resume test)
    assert run.exit_code in (0, None)
    records = _records(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    _assert_history_has(run.history, records)
    assert sorted(run.history) == [5, 10, 15, 20]
    last = run.history[20]
    summary = json.loads((run_dir / "eval.json").read_text())
    for key, value in summary["losses"].items():
        assert last[key] == pytest.approx(value, rel=1e-6)
    assert last["eval/alive/linear1"] == summary["alive"]["linear1"]
    for name in ("causal_importance", "components"):
        assert last[f"figures/{name}/_type"] == "image-file"
        logged = folder / "files" / last[f"figures/{name}/path"]
        written = run_dir / "figures" / f"{name}.png"
        assert hashlib.sha256(logged.read_bytes()).digest() == (
            hashlib.sha256(written.read_bytes()).digest()
        )

    target_dir = runs / "targets" / "tms_tiny_target"
    target_id = (target_dir / WANDB_RUN_ID_FILE).read_text().strip()
    (target_folder,) = offline_runs(wandb_dir, target_id)
    target_run = read_offline_run(target_folder)
    assert target_run.run.display_name == "tms_tiny_target" and target_id != run_id
    _assert_history_has(target_run.history, _records(target_dir / "metrics.jsonl"))


def test_s11_7_a_resumed_run_continues_the_same_wandb_run(
    tmp_path: Path, wandb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id kept in the run folder is reused by a resume, not by a fresh start; without
    `dir` and $WANDB_DIR wandb writes into the run folder."""
    monkeypatch.delenv("WANDB_DIR")
    settings = WandbLogging(project="test", mode="offline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"run_name": "r", "train": {"steps": 4}}
    first = WandbLogger(settings, config, run_dir, resume=False)
    first.log_metrics(1, {"train/loss": 1.0})
    first.close(EXIT_PREEMPTED)
    time.sleep(1.1)  # offline folders are named by their start second: keep the two apart
    resumed = WandbLogger(settings, config, run_dir, resume=True)
    resumed.log_metrics(2, {"train/loss": 0.5})
    resumed.close()
    fresh = WandbLogger(settings, config, run_dir, resume=False)
    fresh.close()

    assert resumed.run_id == first.run_id != fresh.run_id
    assert (run_dir / WANDB_RUN_ID_FILE).read_text().strip() == fresh.run_id
    first_start, second_start = offline_runs(run_dir, first.run_id)
    assert read_offline_run(first_start).exit_code == EXIT_PREEMPTED
    assert read_offline_run(first_start).history[1]["train/loss"] == 1.0
    assert read_offline_run(second_start).history[2]["train/loss"] == 0.5
    assert not wandb_dir.exists()


class _Recorder:
    def __init__(self) -> None:
        self.closed_with: int | None = None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        self.closed_with = exit_code


def _job(tmp_path: Path) -> Job:
    """Only what `job_logging` reads: the config and the run folder."""
    return Job(
        name="r",
        run_dir=tmp_path,
        config={"run_name": "r", "logging": {"wandb": OFFLINE}},
        resume_hint="",
        steps=1,
        state=None,
        step_fn=lambda state, step: (state, {}),
        checkpoint_items=lambda state: {},
        from_checkpoint=lambda state, items: state,
        log_every=1,
    )


def test_s11_7_the_logger_is_closed_with_the_exit_code_and_only_on_process_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(run_loop, "open_logger", lambda *_: recorder)
    with pytest.raises(Preempted), job_logging(_job(tmp_path), resume=False):
        raise Preempted(3, "stopped")
    assert recorder.closed_with == EXIT_PREEMPTED
    monkeypatch.setattr(run_loop, "is_main_process", lambda: False)
    with job_logging(_job(tmp_path), resume=False) as logger:
        assert isinstance(logger, NoLogger)


def test_s11_7_missing_wandb_is_a_config_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the run folder exists, for each command; the logger itself names the
    run folder's config.yaml when reached another way."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    hint = "pip install 'param-decomp[wandb]'"
    path = _configs(tmp_path, OFFLINE)
    runs = tmp_path / "runs"
    for command, file in (("decompose", path), ("train-target", tmp_path / "target.yaml")):
        assert main([command, str(file), "--runs-dir", str(runs)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"config error in {file}" in err and "logging.wandb: is set but" in err
        assert hint in err
    assert not runs.exists()
    with pytest.raises(ConfigError) as caught:
        loggers.open_logger({"logging": {"wandb": OFFLINE}}, tmp_path, resume=False)
    assert str(tmp_path / "config.yaml") in str(caught.value) and hint in str(caught.value)


def test_s11_7_without_the_block_wandb_is_not_imported(tmp_path: Path) -> None:
    """A fresh interpreter: the logging path of a config without the block never imports
    wandb (metrics.jsonl alone; the CLI test checks that nothing of wandb is written)."""
    code = (
        "import sys; from pathlib import Path\n"
        "from param_decomp.config.schema import Logging\n"
        "from param_decomp.train.loggers import NoLogger, check_logging_available, open_logger\n"
        "check_logging_available(Logging(), 'cfg.yaml')\n"
        f"assert isinstance(open_logger({{'run_name': 'r'}}, Path({str(tmp_path)!r}), False),"
        " NoLogger)\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_s11_7_the_logging_block_in_every_config_kind(tmp_path: Path) -> None:
    """Decompose, target and pretrain configs take the block; a bad mode names key and values."""
    for name, load in (
        ("tms_tiny.yaml", load_decompose_config),
        ("tms_tiny_target.yaml", load_target_config),
        ("llama_micro_target.yaml", load_pretrain_config),
    ):
        data = yaml.safe_load((FIXTURES / name).read_text())
        if "target" in data:
            data["target"] = str(FIXTURES / data["target"].split("/")[-1])
        assert _load_with(tmp_path, data, None, load).logging.wandb is None
        cfg = _load_with(tmp_path, data, {"wandb": {"project": "p", "dir": "w"}}, load)
        assert cfg.logging.wandb == WandbLogging(project="p", dir="w")
        with pytest.raises(ConfigError) as caught:
            _load_with(tmp_path, data, {"wandb": {"project": "p", "mode": "on"}}, load)
        problem = dict(caught.value.problems)["logging.wandb.mode"]
        assert "online" in problem and "offline" in problem and "disabled" in problem


def _load_with(
    tmp_path: Path, data: dict, logging: dict | None, load: Callable[[Path], Any]
) -> Any:
    """`data` with the `logging` block (none: without one), written and loaded."""
    data = dict(data) | ({} if logging is None else {"logging": logging})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load(path)
