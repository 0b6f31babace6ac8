"""`param-decomp decompose`: builds everything from the config, trains, evaluates, reports."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import check_mesh, load_any_config
from param_decomp.config.pretrain_schema import PretrainConfig
from param_decomp.config.schema import DecomposeConfig, TargetConfig
from param_decomp.data.sources import BatchSource, SparseFeatureSource, TextSource
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.eval.decomposition_eval import evaluate_decomposition
from param_decomp.eval.figures import write_figures
from param_decomp.eval.summary import format_summary_table
from param_decomp.objective import Objective
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.pretrain import load_pretrained
from param_decomp.targets.training import RUNS_DIR, load_or_train_target
from param_decomp.train.checkpoint import save_pytree
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.step import DecompState, make_faithfulness_warmup, place_and_jit

PROGRESS_KEYS = ("train/loss/total", "train/loss/faithfulness", "train/loss/stochastic_recon")


class NonFiniteLossError(RuntimeError):
    pass


def to_host(tree: Any) -> Any:
    """Numpy copies of (possibly multi-process, sharded) arrays, identical on every process."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def is_main_process() -> bool:
    return jax.process_index() == 0


def _check_sites(cfg: DecomposeConfig, weights: dict[str, Any], config_path: str) -> None:
    unknown = [s for s in cfg.decomposition.sites if s not in weights]
    if unknown:
        raise ConfigError(
            config_path,
            [
                (
                    "decomposition.sites",
                    f"unknown site(s) {unknown}; the target has {sorted(weights)}",
                )
            ],
        )


def _as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def _first_bad_term(metrics: dict[str, Any]) -> str:
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
    return ", ".join(bad) if bad else "unknown term"


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


def build_session(
    cfg: DecomposeConfig, config_path: str, runs_dir: Path = RUNS_DIR, show_progress: bool = True
) -> Session:
    """Load/train the target, check sites and mesh, place arrays, warm up, jit the step."""
    check_mesh(cfg, jax.device_count(), config_path)  # S13.1: before anything compiles
    target_cfg = load_any_config(cfg.target)
    if isinstance(target_cfg, PretrainConfig):
        target = load_pretrained(target_cfg, runs_dir)
    elif isinstance(target_cfg, TargetConfig):
        target = load_or_train_target(target_cfg, runs_dir)
    else:
        raise ConfigError(config_path, [("target", f"{cfg.target} is not a target config")])
    weights = target.site_weights()
    _check_sites(cfg, weights, config_path)

    mesh = build_mesh(cfg.mesh)
    plan = PlacementPlan(mesh, cfg.mesh.shard_target_weights)
    site_shapes = {s: tuple(weights[s].shape) for s in cfg.decomposition.sites}
    model = DecompositionModel(cfg.decomposition, site_shapes, rngs=nnx.Rngs(params=cfg.seed))
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    objective = Objective.from_terms(cfg.losses)
    steps = cfg.train.steps
    optimizer = make_optimizer(cfg.train.optimizer, steps)
    warm = cfg.train.faithfulness_warmup
    warmup = (
        make_faithfulness_warmup(graphdef, target_graphdef, warm.lr, warm.weight_decay, warm.steps)
        if warm.steps > 0
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
        cfg.decomposition.C,
        2,
        jax.random.key(cfg.seed),
        warmup,
    )
    if isinstance(target_cfg, PretrainConfig):
        source: BatchSource = TextSource(
            target_cfg,
            cfg.train.batch_size,
            cfg.seed,
            compiled.batch_sharding,
            Path(runs_dir),
        )
    else:
        data = cfg.data or target_cfg.data
        source = SparseFeatureSource(
            data, target.n_features, cfg.train.batch_size, cfg.seed, compiled.batch_sharding
        )
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


def run_decompose(
    cfg: DecomposeConfig, config_path: str, runs_dir: Path = RUNS_DIR, show_progress: bool = True
) -> dict[str, Any]:
    """Train a decomposition as configured; returns the evaluation dict (also written to disk)."""
    session = build_session(cfg, config_path, runs_dir, show_progress)
    run_dir, steps, state = session.run_dir, cfg.train.steps, session.state
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
    metrics_path = run_dir / "metrics.jsonl"
    metrics_file = metrics_path.open("w") if is_main_process() else None
    bar = tqdm(total=steps, disable=not (show_progress and is_main_process()), file=sys.stdout)
    try:
        in_flight: dict[str, jax.Array] | None = None
        for step in range(steps):
            state, metrics = session.train_step(
                state, session.target_state, session.source.train_batch(step)
            )
            if in_flight is not None:
                # At most one step queued: XLA:CPU's multi-device collectives can deadlock when
                # many executions are queued (seen with jax 0.10.2); the cost is negligible.
                jax.block_until_ready(in_flight)
            in_flight = metrics
            last = step == steps - 1
            if (step + 1) % cfg.train.log_every == 0 or last:
                host = jax.device_get(metrics)
                bad_step = int(state.first_nonfinite_step)
                if bad_step >= 0:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {bad_step}: {_first_bad_term(host)} "
                        f"(metrics at step {step}: {json.dumps(_as_floats(host))})"
                    )
                record = {"step": step + 1, **_as_floats(host)}
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                bar.set_postfix(
                    {k.split("/")[-1]: f"{record[k]:.2e}" for k in PROGRESS_KEYS if k in record}
                )
                bar.update(step + 1 - bar.n)
            every = cfg.checkpointing.every
            if every and (step + 1) % every == 0 and not last:
                save_pytree(
                    run_dir / "checkpoints",
                    step + 1,
                    state,
                    cfg.checkpointing.keep,
                    session.source.data_state(),
                )
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    save_pytree(
        run_dir / "checkpoints", steps, state, cfg.checkpointing.keep, session.source.data_state()
    )
    return finish_run(
        cfg,
        session.objective,
        session.graphdef,
        state,
        session.target_graphdef,
        session.target_state,
        session.source,
        run_dir,
        show_progress,
    )


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
) -> dict[str, Any]:
    """Evaluate, print the summary table, write eval.json and the figures (process 0 only).

    Every process evaluates the same host copy of the parameters, so evaluation needs no mesh.
    """
    params, target_state = jax.tree.map(jax.numpy.asarray, to_host((state.params, target_state)))
    result = evaluate_decomposition(
        cfg, objective, graphdef, params, target_graphdef, target_state, source
    )
    rows: list[dict[str, object]] = []
    for site, alive in result["alive"].items():
        rows.append({"site": site, "alive": int(alive.sum()), "C": int(alive.size), "value": ""})
    for name, value in result["losses"].items():
        rows.append({"site": name, "alive": "", "C": "", "value": value})
    table = format_summary_table(rows)
    result["summary_table"] = table
    if is_main_process():
        if show_progress:
            print(table)
        summary = {
            "alive": {s: int(a.sum()) for s, a in result["alive"].items()},
            "losses": result["losses"],
            "steps": cfg.train.steps,
        }
        (run_dir / "eval.json").write_text(json.dumps(summary, indent=2))
        if cfg.eval.figures:
            V = {s: vu[0] for s, vu in result["VU"].items()}
            U = {s: vu[1] for s, vu in result["VU"].items()}
            write_figures(run_dir, result["one_hot_ci"], V, U, result["alive"])
    return result
