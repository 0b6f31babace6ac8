"""The `train-target` job: a toy target trained on its sparse features in the shared run loop,
cached under runs/targets/ (and trained here when a decomposition finds no cached one)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from param_decomp.config.schema import TargetConfig
from param_decomp.config.target_kinds import refuse, yaml_kind
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.jobs.target_cache import cached_or_trained
from param_decomp.targets.build import build_target
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.run_dir import RUNS_DIR, prepare_run_dir, target_run_dir
from param_decomp.train.run_loop import STOP, Job, run_job


def train_target(
    cfg: TargetConfig,
    runs_dir: Path = RUNS_DIR,
    log: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config_path: str = "CONFIG",
) -> nnx.Module:
    """Train with MSE against the target's labels on fresh sparse batches (a pure function of
    (seed, step)), in the shared run loop; the final step's item `model` is the target."""
    refuse(yaml_kind(cfg.model.type), "train-target", f"target {cfg.run_name!r}")
    out_dir = target_run_dir(cfg.run_name, runs_dir)
    command = f"param-decomp train-target {config_path} --runs-dir {runs_dir}"
    with STOP.installed():
        prepare_run_dir(out_dir, cfg.model_dump(mode="json"), resume, overwrite, command)
        model = build_target(cfg)
        graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
        optimizer = make_optimizer(cfg.train.optimizer, cfg.train.steps)
        n_features, key = model.n_features, jax.random.key(cfg.seed + 1)

        def loss_fn(p: nnx.State, x: jax.Array) -> jax.Array:
            m = nnx.merge(graphdef, p, frozen)
            return jnp.mean((m(x) - m.labels(x)) ** 2)

        def one_step(
            state: tuple[nnx.State, optax.OptState], step: jax.Array
        ) -> tuple[tuple[nnx.State, optax.OptState], dict[str, jax.Array]]:
            p, opt = state
            x = sample_sparse_features(
                jax.random.fold_in(key, step), cfg.train.batch_size, n_features, cfg.data
            )
            loss, grads = jax.value_and_grad(loss_fn)(p, x)
            updates, opt = optimizer.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), {"train/loss": loss}

        train_step = jax.jit(one_step, donate_argnums=(0,))

        @partial(jax.jit, static_argnums=(2,), donate_argnums=(0,))
        def train_chunk(
            state: tuple[nnx.State, optax.OptState], start: jax.Array, n: int
        ) -> tuple[tuple[nnx.State, optax.OptState], dict[str, jax.Array]]:
            """Steps start..start+n-1 in one dispatch (S11.8): a toy step is microseconds of
            work, so one dispatch per step would cost more than the step."""
            return jax.lax.scan(one_step, state, start + jnp.arange(n, dtype=jnp.int32))

        def items(state: tuple[nnx.State, optax.OptState]) -> dict[str, object]:
            """Host copies: a toy target trains on one device of each process (identically
            on every process), so its arrays are not global arrays orbax could write."""
            full = nnx.state(nnx.merge(graphdef, state[0], frozen))
            return jax.tree.map(np.asarray, {"model": full, "training": {"opt": state[1]}})

        full_graphdef = nnx.graphdef(model)

        def from_items(_: object, restored: dict) -> tuple[nnx.State, optax.OptState]:
            """Params back out of the saved full model state (frozen parts are rebuilt)."""
            _, p, _ = nnx.split(nnx.merge(full_graphdef, restored["model"]), nnx.Param, ...)
            return p, restored["training"]["opt"]

        job = Job(
            name=f"target {cfg.run_name}",
            run_dir=out_dir,
            config=cfg.model_dump(mode="json"),
            resume_hint=f"{command} --resume",
            steps=cfg.train.steps,
            state=(params, optimizer.init(params)),
            step_fn=lambda state, step: train_step(state, jnp.asarray(step, jnp.int32)),
            chunk_fn=lambda state, step, n: train_chunk(state, jnp.asarray(step, jnp.int32), n),
            checkpoint_items=items,
            from_checkpoint=from_items,
            log_every=cfg.train.log_every,
            checkpoint_every=cfg.checkpointing.every or None,
            keep=cfg.checkpointing.keep,
            show_progress=log,
            print_lines=True,
        )
        state, _ = run_job(job, resume)
    return nnx.merge(graphdef, state[0], frozen)


def load_or_train_target(
    cfg: TargetConfig, runs_dir: Path = RUNS_DIR, config_path: str = "CONFIG"
) -> nnx.Module:
    """The cached target if its run finished, else train it first (continuing an
    interrupted run from its latest checkpoint)."""
    return cached_or_trained(
        cfg.run_name,
        runs_dir,
        cfg.train.steps,
        lambda: build_target(cfg),
        lambda resume: train_target(cfg, runs_dir, resume=resume, config_path=config_path),
        "trained target",
        "training",
    )
