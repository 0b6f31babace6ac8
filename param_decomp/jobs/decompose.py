"""The `decompose` job: the target (cached, trained, pretrained or an hf folder), the data, the
decomposition, the step and the evaluation assembled from the config and handed to the run
loop; at the end the evaluation, summary table and figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from pydantic import BaseModel

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import check_mesh
from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.config.schema import DecomposeConfig, TargetConfig
from param_decomp.data.sources import BatchSource, SparseFeatureSource, TextSource
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sites import SiteError, resolve_sites
from param_decomp.eval.decomposition_eval import evaluate_decomposition
from param_decomp.eval.fast_tier import CARRY_MIN_GAP_NATS, fast_tier
from param_decomp.eval.figure_tier import figure_tier, step_figure_dir
from param_decomp.eval.figures import write_figures
from param_decomp.eval.summary import format_summary_table
from param_decomp.jobs.pretrain import load_pretrained
from param_decomp.jobs.train_target import load_or_train_target
from param_decomp.objective import Objective
from param_decomp.plan.memory_fit import check_fits
from param_decomp.runconfig.target_config import resolve_target_config, target_kind
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.hf.config_map import HFTargetSpec
from param_decomp.targets.hf.load import load_hf_target
from param_decomp.train.loggers import MetricsLogger, NoLogger, check_logging_available
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.run_dir import RUNS_DIR, prepare_run_dir
from param_decomp.train.run_loop import (
    STOP,
    Job,
    is_main_process,
    job_logging,
    run_job,
)
from param_decomp.train.step import DecompState, make_faithfulness_warmup, place_and_jit

PROGRESS_KEYS = ("train/loss/total", "train/loss/faithfulness", "train/loss/stochastic_recon")


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly multi-process, sharded) arrays, identical on every process."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _resolve_sites(cfg: DecomposeConfig, weights: dict[str, Any], config_path: str) -> None:
    """S1.4: every `decomposition.sites` entry resolves against the target, as a ConfigError."""
    try:
        resolve_sites(cfg.decomposition, list(weights))
    except SiteError as err:
        raise ConfigError(config_path, [("decomposition.sites", str(err))]) from None


def checked_target_config(cfg: DecomposeConfig, config_path: str) -> BaseModel | HFTargetSpec:
    """The target's config, after the checks that must refuse a run before anything is built
    or written: the mesh divides the devices and batch (S13.1), and the decomposition fits
    them (S13.4). Run once per run: `run_decompose` hands the result to `build_session`."""
    check_mesh(cfg, jax.device_count(), config_path, jax.process_count())
    target_cfg = resolve_target_config(cfg, config_path)
    check_fits(cfg, target_cfg, config_path, jax.device_count())
    return target_cfg


@dataclass
class Session:
    """Everything a decomposition run needs, built (and validated) before the first step."""

    cfg: DecomposeConfig
    objective: Objective
    graphdef: nnx.GraphDef
    target_graphdef: nnx.GraphDef
    target_state: nnx.State
    state: DecompState
    train_step: Callable[..., Any]
    source: BatchSource
    plan: PlacementPlan
    run_dir: Path


def load_target(
    cfg: DecomposeConfig,
    config_path: str,
    runs_dir: Path,
    plan: PlacementPlan | None = None,
    target_cfg: BaseModel | HFTargetSpec | None = None,
) -> tuple[TargetConfig | PretrainConfig | HFTargetSpec, nnx.Module]:
    """The target's config and the trained target (trained or pretrained first if missing; an
    hf folder read straight into the plan's target shardings, S17.5), its sites resolved
    against the config (S1.4). `target_cfg`: the caller's `resolve_target_config` result, so
    an hf folder's headers are not read again."""
    if target_cfg is None:
        target_cfg = resolve_target_config(cfg, config_path)
    if not isinstance(target_cfg, HFTargetSpec | PretrainConfig | TargetConfig):
        raise ConfigError(config_path, [("target", f"{cfg.target} is not a target config")])
    source = target_kind(target_cfg).source
    if source == "hf":
        target = load_hf_target(target_cfg, plan.target_shardings if plan is not None else None)
    elif source == "pretrained":
        target = load_pretrained(target_cfg, runs_dir, str(cfg.target))
    else:
        target = load_or_train_target(target_cfg, runs_dir, str(cfg.target))
    _resolve_sites(cfg, target.site_weights(), config_path)
    return target_cfg, target


def new_decomposition(cfg: DecomposeConfig, target: nnx.Module) -> DecompositionModel:
    """The freshly initialised decomposition of the target's configured sites (S1.4)."""
    weights = target.site_weights()
    site_shapes = {s: (int(w.shape[0]), int(w.shape[1])) for s, w in weights.items()}
    return DecompositionModel(
        cfg.decomposition,
        site_shapes,
        rngs=nnx.Rngs(params=cfg.seed),
        index_sites=getattr(target, "INDEX_SITES", ()),
    )


def make_source(
    cfg: DecomposeConfig,
    target_cfg: TargetConfig | PretrainConfig | HFTargetSpec,
    target: nnx.Module,
    batch_sharding: Any,
    runs_dir: Path,
) -> BatchSource:
    """Training and eval batches: windows of the pretraining corpus (or an hf target's text
    block) for LM targets, sparse features for toys."""
    if target_kind(target_cfg).lm:
        return TextSource(target_cfg, cfg.train.batch_size, cfg.seed, batch_sharding, runs_dir)
    data = cfg.data or target_cfg.data
    return SparseFeatureSource(
        data, target.n_features, cfg.train.batch_size, cfg.seed, batch_sharding
    )


def build_session(
    cfg: DecomposeConfig,
    config_path: str,
    runs_dir: Path = RUNS_DIR,
    show_progress: bool = True,
    warm_up: bool = True,
    target_cfg: BaseModel | HFTargetSpec | None = None,
) -> Session:
    """Load/train the target, check sites and mesh, place arrays, warm up (unless resuming:
    the checkpoint replaces the warmed-up params), jit the step. `target_cfg`: the result of
    `checked_target_config` when the caller already ran it (else it runs here)."""
    if target_cfg is None:
        target_cfg = checked_target_config(cfg, config_path)
    mesh = build_mesh(cfg.mesh)
    plan = PlacementPlan.for_config(mesh, cfg.mesh)
    target_cfg, target = load_target(cfg, config_path, runs_dir, plan, target_cfg)
    graphdef, params = nnx.split(new_decomposition(cfg, target))
    target_graphdef, target_state = nnx.split(target)
    objective = Objective.from_terms(cfg.losses, cfg.train.remat)
    steps = cfg.train.steps
    optimizer = make_optimizer(cfg.train.optimizer, steps)
    warm = cfg.train.faithfulness_warmup
    warmup = (
        make_faithfulness_warmup(graphdef, target_graphdef, warm.lr, warm.weight_decay, warm.steps)
        if warm.steps > 0 and warm_up
        else None
    )
    compiled = place_and_jit(
        objective,
        graphdef,
        target_graphdef,
        params,
        target_state,
        optimizer,
        steps,
        plan,
        2,
        jax.random.key(cfg.seed),
        warmup,
        cfg.train.compute_dtype,
        cfg.train.micro_batches,
    )
    source = make_source(cfg, target_cfg, target, compiled.batch_sharding, Path(runs_dir))
    return Session(
        cfg,
        objective,
        graphdef,
        target_graphdef,
        compiled.target_state,
        compiled.state,
        compiled.train_step,
        source,
        plan,
        runs_dir / cfg.run_name,
    )


def decompose_job(session: Session, resume_hint: str, show_progress: bool) -> Job:
    """The decomposition as a job of the run loop: per step the items `decomposition` (V/U
    and CI-function params, what analysis loads) and `training` (optimizer state, step, RNG
    key, NaN marker), plus the pipeline position for LM targets (S11.4)."""
    cfg = session.cfg

    def step_fn(state: DecompState, step: int) -> tuple[DecompState, dict[str, jax.Array]]:
        return session.train_step(state, session.target_state, session.source.train_batch(step))

    def items(state: DecompState) -> dict[str, Any]:
        training = {
            "opt_state": state.opt_state,
            "step": state.step,
            "key": jax.random.key_data(state.key),
            "first_nonfinite_step": state.first_nonfinite_step,
        }
        if state.adversary is not None:  # S6A.6: persistent PGD sources and their moments
            training["adversary"] = state.adversary
        if state.multipliers is not None:  # S7A.4: a density target's Lagrange multipliers
            training["multipliers"] = state.multipliers
        return {"decomposition": state.params, "training": training}

    batches = session.source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    probe = session.source.probe()

    def evaluate(state: DecompState) -> dict[str, float]:
        """The fast tier (S14.2) on host copies, as `finish_run` evaluates: no mesh needed."""
        params, target_state = jax.tree.map(
            jax.numpy.asarray, to_host((state.params, session.target_state))
        )
        return fast_tier(
            cfg, session.graphdef, params, session.target_graphdef, target_state, batches, probe
        )

    def figures(state: DecompState, step: int) -> dict[str, Path]:
        """The figure tier (S14.7) into figures/step_<step>/; every process takes part in the
        host copy, only process 0 computes and writes."""
        params, target_state = jax.tree.map(
            jax.numpy.asarray, to_host((state.params, session.target_state))
        )
        if not is_main_process():
            return {}
        return figure_tier(
            cfg,
            session.graphdef,
            params,
            session.target_graphdef,
            target_state,
            session.source,
            step_figure_dir(session.run_dir, step),
            step,
        )

    def from_items(template: DecompState, restored: dict[str, Any]) -> DecompState:
        training = restored["training"]
        return DecompState(
            params=restored["decomposition"],
            opt_state=training["opt_state"],
            step=training["step"],
            key=jax.random.wrap_key_data(training["key"], impl=jax.random.key_impl(template.key)),
            first_nonfinite_step=training["first_nonfinite_step"],
            adversary=training.get("adversary"),
            multipliers=training.get("multipliers"),
        )

    return Job(
        name=f"decompose {cfg.run_name}",
        run_dir=session.run_dir,
        config=cfg.model_dump(mode="json"),
        resume_hint=resume_hint,
        steps=cfg.train.steps,
        state=session.state,
        step_fn=step_fn,
        checkpoint_items=items,
        from_checkpoint=from_items,
        log_every=cfg.train.log_every,
        checkpoint_every=cfg.checkpointing.every or None,
        keep=cfg.checkpointing.keep,
        data=session.source if isinstance(session.source, TextSource) else None,
        evaluate=evaluate,
        eval_every=cfg.eval.every or None,
        figures=figures if cfg.eval.figures else None,
        figures_every=cfg.eval.figures_every or None,
        progress_keys=PROGRESS_KEYS,
        show_progress=show_progress,
    )


def run_decompose(
    cfg: DecomposeConfig,
    config_path: str,
    runs_dir: Path = RUNS_DIR,
    show_progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Train a decomposition as configured (or continue it from its latest checkpoint);
    returns the evaluation dict (also written to disk). `resume_command`: what a stopped run
    tells the user to run to continue it (default: this decompose command with --resume)."""
    command = f"param-decomp decompose {config_path} --runs-dir {runs_dir}"
    # S13.1/S13.4: a config that cannot run or fit is refused before its folder is touched
    target_cfg = checked_target_config(cfg, config_path)
    check_logging_available(cfg.logging, config_path)
    with ExitStack() as stack:
        with STOP.installed():
            prepare_run_dir(
                Path(runs_dir) / cfg.run_name,
                cfg.model_dump(mode="json"),
                resume,
                overwrite,
                command,
            )
            session = build_session(
                cfg, config_path, runs_dir, show_progress, not resume, target_cfg
            )
            job = decompose_job(session, resume_command or f"{command} --resume", show_progress)
            # opened after the target exists: a target trained here logs (and closes) first
            logger = stack.enter_context(job_logging(job, resume))
            state, _ = run_job(job, resume, logger)
        return finish_run(
            cfg,
            session.objective,
            session.graphdef,
            state,
            session.target_graphdef,
            session.target_state,
            session.source,
            session.run_dir,
            show_progress,
            logger,
        )


def evaluation(
    cfg: DecomposeConfig,
    objective: Objective,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    source: BatchSource,
) -> dict[str, Any]:
    """The end-of-run evaluation of host `params` (S14.1, the fast tier S14.2) and its
    summary table; what `finish_run` and `param-decomp eval` report."""
    result = evaluate_decomposition(
        cfg, objective, graphdef, params, target_graphdef, target_state, source
    )
    batches = source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    result["fast_tier"] = fast_tier(
        cfg, graphdef, params, target_graphdef, target_state, batches, source.probe()
    )
    result["summary_table"] = format_summary_table(summary_rows(result))
    return result


# the whole-model masks the summary table reports ce_unrecovered for (LM targets, S14.9)
SUMMARY_MASKS = ("ci", "rounded_ci>0.1", "stochastic", "pgd")


def summary_rows(result: dict[str, Any]) -> list[dict[str, object]]:
    """Per site: alive, C and L0 (CI > threshold, S14.5); the eval losses; per layer the carry
    check (S14.11); for LMs the share of the ablation gap the main masks leave (S14.9)."""
    fast = result["fast_tier"]
    rows: list[dict[str, object]] = []
    for site, alive in result["alive"].items():
        l0 = fast[f"eval/ci_l0/{site}"]
        rows.append({"site": site, "alive": int(alive.sum()), "C": int(alive.size), "L0": l0})
    for name, value in result["losses"].items():
        rows.append({"site": name, "value": value})
    carried = sorted(k for k in fast if k.startswith("eval/carried/"))
    rows += [{"site": key, "value": carried_cell(fast, key)} for key in carried]
    unrecovered = [f"eval/ce_unrecovered/{m}" for m in SUMMARY_MASKS]
    rows += [{"site": key, "value": fast[key]} for key in unrecovered if key in fast]
    for row in rows:
        row.setdefault("value", "")
    return rows


def carried_cell(fast: dict[str, Any], key: str) -> object:
    """The carried value, or why it is not applicable (S14.13)."""
    layer = key.removeprefix("eval/carried/")
    if fast.get(f"eval/carry_applicable/{layer}", 1.0) == 0.0:
        gap = fast[f"eval/carry_gap/{layer}"]
        return f"n/a: zero-ablation costs {gap:.3g} nats (< {CARRY_MIN_GAP_NATS})"
    return fast[key]


def eval_summary(result: dict[str, Any], step: int) -> dict[str, Any]:
    """The JSON of eval.json: alive counts, eval losses, the fast tier, the step evaluated."""
    return {
        "alive": {s: int(a.sum()) for s, a in result["alive"].items()},
        "C": {s: int(a.size) for s, a in result["alive"].items()},
        "losses": result["losses"],
        "fast_tier": result["fast_tier"],
        "steps": step,
    }


def finish_run(
    cfg: DecomposeConfig,
    objective: Objective,
    graphdef: nnx.GraphDef,
    state: DecompState,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    source: BatchSource,
    run_dir: Path,
    show_progress: bool,
    logger: MetricsLogger | None = None,
) -> dict[str, Any]:
    """Evaluate, print the summary table, write eval.json, the figures and the last step's
    figure tier (S14.7) (process 0 only), and send the end-of-run losses, alive counts and
    figures to `logger` (S11.7).

    Every process evaluates the same host copy of the parameters, so evaluation needs no mesh.
    """
    logger = NoLogger() if logger is None else logger
    params, target_state = jax.tree.map(jax.numpy.asarray, to_host((state.params, target_state)))
    result = evaluation(cfg, objective, graphdef, params, target_graphdef, target_state, source)
    if is_main_process():
        print(result["summary_table"])  # --no-progress hides only the progress bar
        summary = eval_summary(result, cfg.train.steps)
        (run_dir / "eval.json").write_text(json.dumps(summary, indent=2))
        alive_counts = {f"eval/alive/{s}": float(n) for s, n in summary["alive"].items()}
        logger.log_metrics(cfg.train.steps, result["losses"] | alive_counts)
        if cfg.eval.figures:
            V = {s: vu[0] for s, vu in result["VU"].items()}
            U = {s: vu[1] for s, vu in result["VU"].items()}
            paths = write_figures(
                run_dir,
                result["figure_ci"],
                V,
                U,
                result["alive"],
                ci_title=result["figure_title"],
                ci_row_label=result["figure_rows"],
            )
            step = cfg.train.steps
            result["figures"] = figure_tier(
                cfg,
                graphdef,
                params,
                target_graphdef,
                target_state,
                source,
                step_figure_dir(run_dir, step),
                step,
            )
            logger.log_images(step, {path.stem: path for path in paths})
            logger.log_images(step, {f"tier/{k}": v for k, v in result["figures"].items()})
    return result
