"""The `eval` job, `param-decomp eval RUN_DIR [--step N]` (S14.8): evaluate a saved checkpoint of a
decomposition run again, without training anything.

The run's own config comes from the checkpoint (item `config`), the target from its cache
under the runs folder (never retrained here), the decomposition parameters from the
checkpoint step; the same end-of-run evaluation and fast tier as `finish_run` (so the step
that ended a run reproduces its eval.json) and the figure tier then run on host copies.
Writes `RUN_DIR/eval_step_<N>.json` and `RUN_DIR/figures/step_<N>/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.config.schema import DecomposeConfig, HFTarget, TargetConfig
from param_decomp.config.target_kinds import TargetKind
from param_decomp.eval.figure_tier import TOKEN_HTML, figure_tier, step_figure_dir
from param_decomp.eval.summary import format_summary_table
from param_decomp.jobs.decompose import (
    eval_summary,
    evaluation,
    load_target,
    make_source,
    new_decomposition,
)
from param_decomp.objective import Objective
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.runconfig.decompose import decompose_config_from_data
from param_decomp.runconfig.target_config import target_kind
from param_decomp.targets.hf.config_map import hf_target_spec
from param_decomp.train.checkpoint import restore_item, restore_json
from param_decomp.train.run_dir import RunDirError, has_checkpoints, target_run_dir


@dataclass(frozen=True)
class RunEvaluation:
    step: int
    summary: dict[str, Any]  # what eval_step_<N>.json holds
    summary_table: str
    json_path: Path
    figures: dict[str, Path]  # {figure name: PNG path}
    token_html: Path | None  # LM targets: the per-token page


def checkpoint_step(run_dir: Path, step: int | None) -> int:
    """The step to evaluate: `step` if the run saved it, else (None) its latest."""
    if not run_dir.is_dir():
        raise RunDirError(f"run folder {run_dir} not found")
    ckpt = run_dir / "checkpoints"
    steps = has_checkpoints(run_dir)
    if not steps:
        raise RunDirError(
            f"{ckpt} holds no checkpoint (is {run_dir} a decomposition run folder that saved one?)"
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise RunDirError(f"{ckpt / str(step)} does not exist; the run has steps {steps}")
    return step


def saved_config(run_dir: Path, step: int) -> DecomposeConfig:
    """The config the run was trained with, from the checkpoint (item `config`)."""
    source = run_dir / "checkpoints" / str(step) / "config"
    if not source.exists():
        raise RunDirError(f"{source} not found: checkpoint step {step} has no saved config")
    return decompose_config_from_data(restore_json(run_dir / "checkpoints", step, "config"), source)


def run_target_kind(run_dir: Path) -> TargetKind:
    """The registry kind of the target a decomposition run folder decomposes (from its latest
    checkpoint's saved config; an hf folder's config.json is read, no weight)."""
    cfg = saved_config(run_dir, checkpoint_step(run_dir, None))
    if isinstance(cfg.target, HFTarget):
        return target_kind(hf_target_spec(cfg.target, cfg.data))
    return target_kind(load_any_config(cfg.target))


def require_trained_target(cfg: DecomposeConfig, runs_dir: Path) -> None:
    """Evaluation must never start a (pre)training run: the target has to be cached (an hf
    folder is read as it is)."""
    if isinstance(cfg.target, HFTarget):
        return
    target_cfg = load_any_config(cfg.target)
    if not isinstance(target_cfg, PretrainConfig | TargetConfig):
        raise RunDirError(f"{cfg.target} (the run's target) is not a target config")
    folder = target_run_dir(target_cfg.run_name, runs_dir)
    if target_cfg.train.steps not in has_checkpoints(folder):
        raise RunDirError(
            f"{folder} has no finished target (step {target_cfg.train.steps}); eval never "
            f"trains one: pass the runs folder that holds it with --runs-dir"
        )


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a decomposition run reopened: its saved config, the runs folder that
    holds its target, the target, and the decomposition (params as restored, numpy)."""

    step: int
    cfg: DecomposeConfig
    runs_dir: Path
    target_cfg: Any
    target: nnx.Module
    graphdef: nnx.GraphDef
    params: nnx.State


def open_checkpoint(
    run_dir: Path, step: int | None = None, runs_dir: Path | None = None
) -> RunCheckpoint:
    """Checkpoint `step` (default: the latest) of the run in `run_dir`, the target looked up in
    `runs_dir` (default: the run folder's parent, where decompose put it) and never trained."""
    run_dir = Path(run_dir)
    step = checkpoint_step(run_dir, step)
    cfg = saved_config(run_dir, step)
    runs_dir = run_dir.parent if runs_dir is None else Path(runs_dir)
    require_trained_target(cfg, runs_dir)
    config_source = str(run_dir / "checkpoints" / str(step) / "config")
    target_cfg, target = load_target(cfg, config_source, runs_dir)
    graphdef, fresh = nnx.split(new_decomposition(cfg, target))
    template = jax.tree.map(np.asarray, fresh)
    params = restore_item(run_dir / "checkpoints", step, "decomposition", template)
    return RunCheckpoint(step, cfg, runs_dir, target_cfg, target, graphdef, params)


def evaluate_checkpoint(
    opened: RunCheckpoint,
) -> tuple[dict[str, Any], nnx.State, nnx.GraphDef, nnx.State, Any]:
    """The end-of-run evaluation (`decompose.evaluation`) of an opened checkpoint; returns it
    with the device params, the target's graphdef and state, and the batch source it used."""
    params = jax.tree.map(jnp.asarray, opened.params)
    target_graphdef, target_state = nnx.split(opened.target)
    target_state = jax.tree.map(jnp.asarray, target_state)
    cfg = opened.cfg
    source = make_source(cfg, opened.target_cfg, opened.target, None, opened.runs_dir)
    objective = Objective.from_terms(cfg.losses)
    result = evaluation(
        cfg, objective, opened.graphdef, params, target_graphdef, target_state, source
    )
    return result, params, target_graphdef, target_state, source


def evaluate_run(
    run_dir: Path, step: int | None = None, runs_dir: Path | None = None
) -> RunEvaluation:
    """Evaluate checkpoint `step` (default: the latest) of the run in `run_dir` (see
    `open_checkpoint`)."""
    run_dir = Path(run_dir)
    opened = open_checkpoint(run_dir, step, runs_dir)
    step, cfg, graphdef = opened.step, opened.cfg, opened.graphdef
    result, params, target_graphdef, target_state, source = evaluate_checkpoint(opened)
    out_dir = step_figure_dir(run_dir, step)
    figures = figure_tier(
        cfg, graphdef, params, target_graphdef, target_state, source, out_dir, step
    )
    html = out_dir / TOKEN_HTML
    summary = eval_summary(result, step) | {
        "checkpoint": str(run_dir / "checkpoints" / str(step)),
        "figures": {name: str(path.relative_to(run_dir)) for name, path in figures.items()},
    }
    json_path = run_dir / f"eval_step_{step}.json"
    json_path.write_text(json.dumps(summary, indent=2))
    return RunEvaluation(
        step,
        summary,
        result["summary_table"],
        json_path,
        figures,
        html if html.is_file() else None,
    )


def report(evaluation: RunEvaluation, run_dir: Path) -> str:
    """The printed summary: alive counts and eval losses, the fast tier, what was written."""
    fast = [{"metric": k, "value": v} for k, v in evaluation.summary["fast_tier"].items()]
    lines = [
        f"param-decomp eval {run_dir}: checkpoint step {evaluation.step}",
        evaluation.summary_table,
        "",
        format_summary_table(fast),
        "",
        f"wrote {evaluation.json_path}",
        f"wrote {len(evaluation.figures)} figures to {step_figure_dir(run_dir, evaluation.step)}",
    ]
    if evaluation.token_html is not None:
        lines.append(f"per-token view: {evaluation.token_html}")
    return "\n".join(lines)
