"""`param-decomp reproduce`: the SPD paper's toy experiments run (targets trained when missing,
finished runs skipped) and scored against the paper's answers into one JSON record per run
(S18.2, S18.3). The write-up is `study/paper_toys.py`."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from param_decomp.config.errors import ConfigError
from param_decomp.eval.toy_recovery import dense_ci_error, identity_ci_error, site_mmcs
from param_decomp.runconfig.decompose import decompose_config_from_data
from param_decomp.study.provenance import commit, machine
from param_decomp.study.reproduce_schema import PlannedExperiment, Reproduction
from param_decomp.study.run_parts import append_part, chain_to, forget_parts, read_parts
from param_decomp.train.run_dir import has_checkpoints

# the eval losses and fast-tier MSEs a record keeps, when the run has them (S14.4)
LOSS_KEYS = (
    "eval/loss/faithfulness",
    "eval/loss/stochastic_recon",
    "eval/loss/stochastic_recon_layerwise",
    "eval/loss/stochastic_recon_subset",
    "eval/loss/pgd_recon",
    "eval/loss/importance_minimality",
)
MSE_KEYS = ("unmasked", "ci", "rounded_ci>0.1", "stochastic", "pgd")


def records_dir(runs_dir: Path) -> Path:
    return Path(runs_dir) / "reproduce"


def record_path(runs_dir: Path, planned: PlannedExperiment) -> Path:
    return records_dir(runs_dir) / f"{planned.config.run_name}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def saved_config(config: Any, source: str) -> dict[str, Any] | None:
    """A config saved by an earlier run, read through the current schema (a key added since
    takes its default) and dumped; None when it no longer loads."""
    if not isinstance(config, dict):
        return None
    try:
        return decompose_config_from_data(config, source).model_dump(mode="json")
    except ConfigError:
        return None


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Written whole or not at all: a killed run never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, allow_nan=True))
    tmp.replace(path)


def same_config(record: dict[str, Any], planned: PlannedExperiment) -> bool:
    """Whether a record was made with this experiment's resolved config (S18.2): the same hash,
    or, when the schema gained a key since, the same config once the record's saved one is read
    through the current schema. Without the second test every new config key would orphan
    every finished record."""
    if record.get("config_hash") == planned.config_hash:
        return True
    saved = saved_config(record.get("config"), f"the record of {planned.spec.name}")
    if saved is None:
        return False
    saved.pop("run_name", None)
    return saved == planned.config.model_dump(mode="json", exclude={"run_name"})


def is_done(planned: PlannedExperiment, runs_dir: Path) -> bool:
    """Done iff its record exists and was made with the same resolved config (S18.2)."""
    record = read_record(record_path(runs_dir, planned))
    return record is not None and same_config(record, planned)


def score_sites(
    planned: PlannedExperiment, target: Any, result: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per site: C, alive, the expected pattern and its CI error on the single-feature inputs
    at 0.75 (the figure probe, S18.3), and the mean max cosine with the true features."""
    spec = planned.spec
    out: dict[str, dict[str, Any]] = {}
    for site, alive_flags in result["alive"].items():
        alive = np.asarray(alive_flags, bool)
        ci = np.asarray(result["figure_ci"][site])
        V, U = result["VU"][site]
        entry: dict[str, Any] = {"C": int(alive.size), "alive": int(alive.sum())}
        if site in spec.identity_sites:
            entry |= {"pattern": "identity", "expected": int(target.n_features)}
            entry["ci_error"] = identity_ci_error(ci)
        elif site in spec.dense_sites:
            k = spec.dense_sites[site]
            entry |= {"pattern": f"dense k={k}", "expected": k, "ci_error": dense_ci_error(ci, k)}
        entry["mmcs"] = site_mmcs(target, site, np.asarray(V), np.asarray(U), alive)
        out[site] = entry
    return out


def _same_saved_config(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether the run folder's saved config is this config. The saved one is read through the
    current schema first, so a key added since it was written (at its default) does not make a
    finished part of the run look like another config and start it over."""
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return saved_config(data, str(path)) == config


def run_experiment(
    planned: PlannedExperiment,
    runs_dir: Path,
    show_progress: bool = True,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Train the target if missing, decompose (continuing an interrupted run of the same
    config, else from scratch), score, and write the record; returns it. `resume_command` is
    what a stopped run tells the user to run again."""
    from param_decomp.jobs.decompose import load_target, run_decompose

    cfg, runs_dir = planned.config, Path(runs_dir)
    started = time.perf_counter()
    _, target = load_target(cfg, planned.config_path, runs_dir)
    target_s = time.perf_counter() - started
    run_dir = runs_dir / cfg.run_name
    saved_steps = has_checkpoints(run_dir)
    resume = bool(saved_steps) and _same_saved_config(run_dir, cfg.model_dump(mode="json"))
    from_step = saved_steps[-1] if resume else 0
    if not resume:
        forget_parts(run_dir)
    started = time.perf_counter()
    try:
        result = run_decompose(
            cfg,
            planned.config_path,
            runs_dir,
            show_progress,
            resume=resume,
            overwrite=not resume,
            resume_command=resume_command,
        )
    finally:  # a stopped part is recorded too: its checkpoint is where the next one starts
        wall_s = time.perf_counter() - started
        reached = has_checkpoints(run_dir)
        if run_dir.is_dir():
            append_part(run_dir, from_step, reached[-1] if reached else from_step, wall_s)
    chain = chain_to(read_parts(run_dir), cfg.train.steps)
    fast = result["fast_tier"]
    record = {
        "name": planned.spec.name,
        "run_name": cfg.run_name,
        "config_path": planned.config_path,
        "config": cfg.model_dump(mode="json"),
        "config_hash": planned.config_hash,
        "steps": cfg.train.steps,
        "paper_steps": planned.paper_steps,
        "n_features": int(target.n_features),
        "sites": score_sites(planned, target, result),
        "losses": {k: result["losses"][k] for k in LOSS_KEYS if k in result["losses"]},
        "mse": {m: fast[f"eval/mse/{m}"] for m in MSE_KEYS if f"eval/mse/{m}" in fast},
        "wall_s": wall_s,
        "target_s": target_s,
        "resumed": resume,
        "resumed_from_step": from_step,
        "total_wall_s": sum(part["wall_s"] for part in chain) if chain else None,
        "parts": len(chain) if chain else None,
        "figure": str(run_dir / "figures" / "causal_importance.png"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
    }
    write_record(record_path(runs_dir, planned), record)
    return record


def rescore_experiment(planned: PlannedExperiment, runs_dir: Path) -> dict[str, Any] | None:
    """Re-score a finished run from its final checkpoint with this code's S18.3 scores, after a
    scoring fix, without training; returns the updated record (None when there is no finished
    record of this config to re-score). The losses and wall times stay the run's own."""
    from param_decomp.jobs.evaluate import evaluate_checkpoint, open_checkpoint

    runs_dir = Path(runs_dir)
    path = record_path(runs_dir, planned)
    record = read_record(path)
    if record is None or not same_config(record, planned):
        return None
    opened = open_checkpoint(runs_dir / planned.config.run_name, record["steps"], runs_dir)
    result = evaluate_checkpoint(opened)[0]
    record["sites"] = score_sites(planned, opened.target, result)
    record["rescored"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "checkpoint_step": opened.step,
    }
    write_record(path, record)
    return record


def rescore_all(repro: Reproduction, runs_dir: Path) -> list[str]:
    """Re-score every finished run of this invocation's budget; returns the names re-scored."""
    done = []
    for planned in repro.experiments:
        if rescore_experiment(planned, runs_dir) is not None:
            print(f"reproduce: re-scored {planned.config.run_name} from its final checkpoint")
            done.append(planned.spec.name)
    return done


def rerun_command(repro: Reproduction, planned: PlannedExperiment, runs_dir: Path) -> str:
    """The command that continues a stopped experiment: the reproduction again, this one only,
    at its budget (a stopped run resumes from its checkpoint, S18.2); not `decompose --resume`,
    whose run folder would be the config's own run_name."""
    name = planned.spec.name
    budget = f" --steps {name}={planned.config.train.steps}" if planned.shortened else ""
    return f"param-decomp reproduce {repro.path} --runs-dir {runs_dir} --only {name}{budget}"


def run_all(repro: Reproduction, runs_dir: Path, show_progress: bool = True) -> list[str]:
    """Run every experiment not done; returns the names run (none on a second invocation)."""
    ran = []
    for planned in repro.experiments:
        if is_done(planned, runs_dir):
            print(f"reproduce: {planned.config.run_name} is done; skipped")
            continue
        print(f"reproduce: running {planned.config.run_name} ({planned.config.train.steps} steps)")
        run_experiment(planned, runs_dir, show_progress, rerun_command(repro, planned, runs_dir))
        ran.append(planned.spec.name)
    return ran
