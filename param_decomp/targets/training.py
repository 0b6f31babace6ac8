"""Training the toy targets themselves (`param-decomp train-target`), cached under runs/targets/."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import yaml
from flax import nnx

from param_decomp.config.errors import ConfigError
from param_decomp.config.schema import GPT2Model, LlamaModel, TargetConfig
from param_decomp.data.sparse_features import sample_sparse_features
from param_decomp.targets.build import build_target
from param_decomp.train.checkpoint import latest_step, restore_module, save_module
from param_decomp.train.optimizer import make_optimizer

RUNS_DIR = Path("runs")


def target_dir(cfg: TargetConfig, runs_dir: Path = RUNS_DIR) -> Path:
    return runs_dir / "targets" / cfg.run_name


def train_target(cfg: TargetConfig, runs_dir: Path = RUNS_DIR, log: bool = True) -> nnx.Module:
    """Train with MSE against the target's labels on fresh sparse batches; save the weights."""
    if isinstance(cfg.model, LlamaModel | GPT2Model):  # an LM learns from text, not features
        raise ConfigError(
            f"target {cfg.run_name!r}",
            [
                (
                    "model.type",
                    "llama targets are not trained here: run `param-decomp pretrain <config>` "
                    "with a pretrain config (e.g. configs/targets/llama_tiny.yaml) first",
                )
            ],
        )
    model = build_target(cfg)
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(cfg.train.optimizer, cfg.train.steps)
    opt_state = optimizer.init(params)
    n_features = model.n_features

    def loss_fn(p: nnx.State, x: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, p, frozen)
        return jnp.mean((m(x) - m.labels(x)) ** 2)

    def body(carry: tuple, step: jax.Array) -> tuple:
        p, opt = carry
        x = sample_sparse_features(
            jax.random.fold_in(key, step), cfg.train.batch_size, n_features, cfg.data
        )
        loss, grads = jax.value_and_grad(loss_fn)(p, x)
        updates, opt = optimizer.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    key = jax.random.key(cfg.seed + 1)
    chunk = cfg.train.log_every
    run_chunk = jax.jit(lambda carry, steps: jax.lax.scan(body, carry, steps))
    out_dir = target_dir(cfg, runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    carry = (params, opt_state)
    with (out_dir / "metrics.jsonl").open("w") as metrics_file:
        for start in range(0, cfg.train.steps, chunk):
            steps = jnp.arange(start, min(start + chunk, cfg.train.steps))
            carry, losses = run_chunk(carry, steps)
            record = {"step": int(steps[-1]) + 1, "train/loss": float(losses[-1])}
            metrics_file.write(json.dumps(record) + "\n")
            if log:
                step, loss = record["step"], record["train/loss"]
                print(f"target {cfg.run_name} step {step:>6d} loss {loss:.3e}")
    params = carry[0]
    trained = nnx.merge(graphdef, params, frozen)
    save_module(out_dir / "checkpoint", cfg.train.steps, trained)
    return trained


def load_or_train_target(cfg: TargetConfig, runs_dir: Path = RUNS_DIR) -> nnx.Module:
    """The cached target if its checkpoint exists, else train it first (and cache it)."""
    ckpt = target_dir(cfg, runs_dir) / "checkpoint"
    if latest_step(ckpt) is None:
        print(f"no trained target at {ckpt}; training it first")
        return train_target(cfg, runs_dir)
    return restore_module(ckpt, build_target(cfg))
