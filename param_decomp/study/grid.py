"""Running a study's grid: every (cell, seed) whose result JSON is missing or stale is pretrained
and summarised into `<runs-dir>/studies/<study>/<cell>__seed<k>.json` (SPEC S16.1, S16.2).

A run's own folder (`<study dir>/runs/<cell>__seed<k>/`) is disposable: it is overwritten when
the run starts again and its checkpoints are deleted once the JSON is written; the JSON is the
result. Tokenizers and token files stay cached under `<runs-dir>/` and are shared by every run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from param_decomp.data.token_store import prepare_tokens
from param_decomp.study.provenance import commit, machine
from param_decomp.study.schema import PlannedRun, Study
from param_decomp.train.run_loop import NonFiniteLossError

RECORD_FORMAT = 1


@dataclass
class GridOutcome:
    """What one invocation did: run names it trained, and those it found done."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def study_dir(study: Study, runs_dir: Path) -> Path:
    return Path(runs_dir) / "studies" / study.config.name


def record_path(study: Study, run: PlannedRun, runs_dir: Path) -> Path:
    return study_dir(study, runs_dir) / f"{run.name}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The run's JSON, or None when absent or unreadable (a half-written file counts as absent)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _added_keys_at_default(current: Any, stored: Any, non_default: Any) -> bool:
    """Every key of `current` missing from `stored` (a config key added since the record was
    written) is absent from `non_default`, the dump without defaults: it holds its default."""
    if not isinstance(current, dict) or not isinstance(stored, dict):
        return True
    non_default = non_default if isinstance(non_default, dict) else {}
    for key, value in current.items():
        if key not in stored:
            if key in non_default:
                return False
        elif not _added_keys_at_default(value, stored[key], non_default.get(key)):
            return False
    return True


def _shared_keys(current: Any, stored: Any) -> Any:
    """`current` without the keys `stored` lacks (at every depth)."""
    if isinstance(current, dict) and isinstance(stored, dict):
        return {k: _shared_keys(v, stored[k]) for k, v in current.items() if k in stored}
    return current


def record_matches(record: dict | None, run: PlannedRun) -> bool:
    """The record was made from `run`'s resolved config (S16.2): its stored config equals
    today's, except for config keys added since, which must hold their defaults (a new key's
    default is the old behaviour), so a schema that grows does not orphan finished runs."""
    if record is None or not isinstance(record.get("config"), dict):
        return False
    stored = {k: v for k, v in record["config"].items() if k != "run_name"}
    current = run.config.model_dump(mode="json", exclude={"run_name"})
    non_default = run.config.model_dump(mode="json", exclude={"run_name"}, exclude_defaults=True)
    return _shared_keys(current, stored) == stored and _added_keys_at_default(
        current, stored, non_default
    )


def is_done(study: Study, run: PlannedRun, runs_dir: Path) -> bool:
    """Done iff its JSON exists and was made from the same resolved config (S16.2)."""
    return record_matches(read_record(record_path(study, run, runs_dir)), run)


def _history(metrics_path: Path) -> list[dict[str, float]]:
    """(step, val bpb, val CE) of every evaluation in the run's metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [
        {"step": r["step"], "val_bpb": r["val/bits_per_byte"], "val_ce": r["val/loss"]}
        for r in rows
        if "val/bits_per_byte" in r
    ]


def write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a record


def run_one(study: Study, run: PlannedRun, runs_dir: Path, show_progress: bool) -> dict[str, Any]:
    """Pretrain one (cell, seed) from scratch and write its JSON; a run whose loss turns
    non-finite is recorded as diverged (a result of the grid, not a reason to stop it)."""
    from param_decomp.jobs.pretrain import pretrain

    cfg = run.config
    folder = study_dir(study, runs_dir) / "runs" / run.name
    prepare_tokens(cfg.data, cfg.seq_len, Path(runs_dir))  # tokenizer time is not train time
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "study": study.config.name,
        "cell": run.cell.name,
        "seed": run.seed,
        "overrides": run.cell.overrides,
        "config_hash": run.config_hash,
        "config": cfg.model_dump(mode="json"),
        "steps": cfg.train.steps,
        "tokens": cfg.train.steps * cfg.train.batch_size * cfg.seq_len,
        "commit": commit(),
        "machine": machine(),
    }
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        pretrain(
            cfg,
            Path(runs_dir),
            log=show_progress,
            overwrite=True,
            config_path=str(study.path),
            run_dir=folder,
        )
        record["status"] = "done"
    except NonFiniteLossError as err:
        record["status"] = "diverged"
        record["error"] = str(err)
    record["train_wall_s"] = time.perf_counter() - start
    # CPU seconds of this process (all its threads): on a machine shared with other work the
    # wall time grows with the load, the CPU time much less, so both are kept
    record["train_cpu_s"] = time.process_time() - cpu_start
    record["load_average_1m_at_end"] = os.getloadavg()[0]
    history = _history(folder / "metrics.jsonl")
    record["history"] = history
    if record["status"] == "done":
        record["final_val_bpb"] = history[-1]["val_bpb"]
        record["final_val_ce_nats"] = history[-1]["val_ce"]
    write_json(record_path(study, run, runs_dir), record)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    return record


def run_grid(study: Study, runs_dir: Path, show_progress: bool = True) -> GridOutcome:
    """Train every run of the study that is not done, in config order."""
    outcome = GridOutcome()
    study_dir(study, runs_dir).mkdir(parents=True, exist_ok=True)
    done = {r.name for r in study.runs if is_done(study, r, runs_dir)}
    todo = [r for r in study.runs if r.name not in done]
    outcome.skipped = [r.name for r in study.runs if r.name in done]
    print(
        f"study {study.config.name}: {len(study.runs)} runs, {len(outcome.skipped)} done, "
        f"{len(todo)} to run",
        flush=True,
    )
    for i, run in enumerate(todo, 1):
        print(f"study {study.config.name}: [{i}/{len(todo)}] {run.name}", flush=True)
        record = run_one(study, run, runs_dir, show_progress)
        outcome.ran.append(run.name)
        result = (
            f"val bpb {record['final_val_bpb']:.4f}"
            if record["status"] == "done"
            else "diverged (loss non-finite)"
        )
        print(f"  {run.name}: {result}, {record['train_wall_s']:.0f} s", flush=True)
    return outcome
