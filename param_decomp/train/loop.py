"""`param-decomp decompose`: builds everything from the config, trains, evaluates, reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from tqdm import tqdm

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import check_mesh, load_target_config
from param_decomp.config.schema import DecomposeConfig
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.eval.decomposition_eval import evaluate_decomposition
from param_decomp.eval.figures import write_figures
from param_decomp.eval.summary import format_summary_table
from param_decomp.objective import Objective
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.training import RUNS_DIR, load_or_train_target
from param_decomp.train.checkpoint import save_pytree
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.step import DecompState, init_state, make_faithfulness_warmup, make_train_step

PROGRESS_KEYS = ("train/loss/total", "train/loss/faithfulness", "train/loss/stochastic_recon")


class NonFiniteLossError(RuntimeError):
    pass


def is_main_process() -> bool:
    return jax.process_index() == 0


def _check_sites(cfg: DecomposeConfig, weights: dict[str, Any], config_path: str) -> None:
    unknown = [s for s in cfg.decomposition.sites if s not in weights]
    if unknown:
        raise ConfigError(
            config_path,
            [("decomposition.sites", f"unknown site(s) {unknown}; the target has {sorted(weights)}")],
        )


def _first_bad_term(metrics: dict[str, Any]) -> str:
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
    return ", ".join(bad) if bad else "unknown term"


def run_decompose(
    cfg: DecomposeConfig, config_path: str, runs_dir: Path = RUNS_DIR, show_progress: bool = True
) -> dict[str, Any]:
    """Train a decomposition as configured; returns the evaluation dict (also written to disk)."""
    target_cfg = load_target_config(cfg.target)
    data_cfg = cfg.data or target_cfg.data
    target = load_or_train_target(target_cfg, runs_dir)
    weights = target.site_weights()
    _check_sites(cfg, weights, config_path)
    check_mesh(cfg, jax.device_count(), config_path)

    mesh = build_mesh(cfg.mesh)
    plan = PlacementPlan(mesh, cfg.mesh.shard_target_weights)
    site_shapes = {s: tuple(weights[s].shape) for s in cfg.decomposition.sites}
    model = DecompositionModel(cfg.decomposition, site_shapes, rngs=nnx.Rngs(params=cfg.seed))
    graphdef, params = nnx.split(model)
    target_graphdef, target_state = nnx.split(target)
    params = jax.device_put(params, plan.decomposition_shardings(params, cfg.decomposition.C))
    target_state = jax.device_put(target_state, plan.target_shardings(target_state))

    objective = Objective.from_terms(cfg.losses)
    steps = cfg.train.steps
    optimizer = make_optimizer(cfg.train.optimizer, steps)

    run_dir = runs_dir / cfg.run_name
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )

    warm = cfg.train.faithfulness_warmup
    if warm.steps > 0:
        warmup = jax.jit(make_faithfulness_warmup(graphdef, target_graphdef, warm.lr, warm.weight_decay, warm.steps))
        params, faith = warmup(params, target_state)
        if show_progress and is_main_process():
            print(f"faithfulness warmup: {warm.steps} steps, faithfulness {float(faith):.3e}")

    state = jax.jit(lambda p: init_state(p, optimizer, jax.random.key(cfg.seed)))(params)
    state_shardings = jax.tree.map(lambda a: a.sharding, state)
    target_shardings = jax.tree.map(lambda a: a.sharding, target_state)
    n_features = target.n_features
    batch_sharding = plan.batch(2)
    train_step = jax.jit(
        make_train_step(objective, graphdef, target_graphdef, optimizer, steps),
        in_shardings=(state_shardings, target_shardings, batch_sharding),
        out_shardings=(state_shardings, plan.replicated()),
        donate_argnums=(0,),
    )
    data_key = jax.random.key(cfg.seed + 1)
    sample = jax.jit(
        lambda step: sample_sparse_features(
            jax.random.fold_in(data_key, step), cfg.train.batch_size, n_features, data_cfg
        ),
        out_shardings=batch_sharding,
    )

    metrics_path = run_dir / "metrics.jsonl"
    metrics_file = metrics_path.open("w") if is_main_process() else None
    bar = tqdm(total=steps, disable=not (show_progress and is_main_process()), file=sys.stdout)
    try:
        for step in range(steps):
            state, metrics = train_step(state, target_state, sample(step))
            last = step == steps - 1
            if (step + 1) % cfg.train.log_every == 0 or last:
                host = jax.device_get(metrics)
                bad_step = int(state.first_nonfinite_step)
                if bad_step >= 0:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {bad_step}: {_first_bad_term(host)} "
                        f"(metrics of step {step}: {json.dumps({k: float(v) for k, v in host.items()})})"
                    )
                record = {"step": step + 1, **{k: float(v) for k, v in host.items()}}
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                bar.set_postfix({k.split("/")[-1]: f"{record[k]:.2e}" for k in PROGRESS_KEYS if k in record})
                bar.update(step + 1 - bar.n)
            every = cfg.checkpointing.every
            if every and (step + 1) % every == 0 and not last:
                save_pytree(run_dir / "checkpoints", step + 1, state, cfg.checkpointing.keep)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    save_pytree(run_dir / "checkpoints", steps, state, cfg.checkpointing.keep)
    return finish_run(cfg, objective, graphdef, state, target_graphdef, target_state, data_cfg, run_dir, show_progress)


def finish_run(
    cfg: DecomposeConfig,
    objective: Objective,
    graphdef: nnx.GraphDef,
    state: DecompState,
    target_graphdef: nnx.GraphDef,
    target_state: nnx.State,
    data_cfg: Any,
    run_dir: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """Evaluate, print the summary table, write eval.json and the figures (process 0 only)."""
    result = evaluate_decomposition(cfg, objective, graphdef, state.params, target_graphdef, target_state, data_cfg)
    rows: list[dict[str, object]] = []
    for site, alive in result["alive"].items():
        rows.append({"site": site, "alive": int(alive.sum()), "C": int(alive.size)})
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


