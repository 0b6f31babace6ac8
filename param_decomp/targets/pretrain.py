"""Pretraining the Llama target on text (`param-decomp pretrain`), cached under runs/targets/.

The checkpoint is the full `nnx.state(model)` at runs/targets/<run_name>/checkpoint, the same
layout as the toy targets, so a decomposition can restore it like any other target. The loss is
chosen by the config's `objective` block and built only from `param_decomp.losses.lm_objectives`,
the same functions the decomposition's LM loss terms use.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.pretrain_schema import Objective, PretrainConfig
from param_decomp.config.schema import GPT2Model
from param_decomp.data.pipeline import TextBatches, fixed_windows
from param_decomp.data.token_store import prepare_tokens
from param_decomp.losses import lm_objectives as lm
from param_decomp.targets.gpt2 import GPT2
from param_decomp.targets.llama import Llama
from param_decomp.targets.precision import lm_logits
from param_decomp.train.checkpoint import latest_step, restore_module, save_module
from param_decomp.train.optimizer import make_optimizer

RUNS_DIR = Path("runs")

LossFn = Callable[[Float[Array, "b t v"], Int[Array, "b t"]], Float[Array, ""]]


def pretrain_dir(cfg: PretrainConfig, runs_dir: Path = RUNS_DIR) -> Path:
    return Path(runs_dir) / "targets" / cfg.run_name


def build_llama(cfg: PretrainConfig) -> Llama | GPT2:
    """The untrained LM of the config's `model.type`; its init is a function of cfg.seed only."""
    rngs = nnx.Rngs(params=cfg.seed)
    if isinstance(cfg.model, GPT2Model):
        return GPT2(cfg.model, rngs=rngs)
    return Llama(cfg.model, rngs=rngs)


def make_objective(obj: Objective, bytes_per_tok: Int[Array, " vocab"]) -> LossFn:
    """(logits, targets) -> scalar training loss for the configured objective kind (+ z-loss)."""
    if obj.kind == "focal":
        base: LossFn = lambda logits, t: lm.focal(logits, t, obj.gamma)
    elif obj.kind == "poly1":
        base = lambda logits, t: lm.poly1(logits, t, obj.epsilon)
    elif obj.kind == "bytes_weighted_ce":
        base = lambda logits, t: lm.bytes_weighted_cross_entropy(logits, t, bytes_per_tok)
    elif obj.label_smoothing > 0:
        base = lambda logits, t: lm.label_smoothing_cross_entropy(logits, t, obj.label_smoothing)
    else:
        base = lm.cross_entropy
    if obj.z_loss == 0:
        return base
    return lambda logits, t: base(logits, t) + lm.z_loss(logits, obj.z_loss)


def evaluate(
    model: Callable[[Int[Array, "n t"]], Float[Array, "n t v"]],
    windows: Int[Array, "n t_plus_1"],
    bytes_per_tok: Int[Array, " vocab"],
) -> dict[str, Float[Array, ""]]:
    """Plain next-token CE (nats) and bits per byte over all the given windows, in one batch;
    `model` maps tokens to float32 logits (an LM, or `lm_logits` at the run's compute dtype)."""
    logits = model(windows[:, :-1])
    targets = windows[:, 1:]
    return {
        "val/loss": lm.cross_entropy(logits, targets),
        "val/bits_per_byte": lm.bits_per_byte(logits, targets, bytes_per_tok),
    }


def pretrain(cfg: PretrainConfig, runs_dir: Path = RUNS_DIR, log: bool = True) -> Llama | GPT2:
    """Train from cfg.seed's init on the corpus's train windows (through the grain pipeline);
    log metrics; save the checkpoint with the pipeline position."""
    seq_len = cfg.seq_len
    store = prepare_tokens(cfg.data, seq_len, Path(runs_dir))
    val = jnp.asarray(fixed_windows(store.val, seq_len, cfg.data.max_val_windows))
    bpt = jnp.asarray(store.tokenizer.bytes_per_token())
    loss_of_logits = make_objective(cfg.objective, bpt)
    batches = TextBatches(
        store.train, seq_len, cfg.train.batch_size, cfg.seed + 1, prefetch=cfg.data.prefetch
    )

    model = build_llama(cfg)
    graphdef, params = nnx.split(model)  # every variable of the LM is a trained Param
    optimizer = make_optimizer(cfg.train.optimizer, cfg.train.steps)

    def loss_fn(p: nnx.State, windows: Int[Array, "b t_plus_1"]) -> Float[Array, ""]:
        logits = lm_logits(graphdef, p, windows[:, :-1], cfg.train.compute_dtype)
        return loss_of_logits(logits, windows[:, 1:])

    @jax.jit
    def train_step(
        state: tuple[nnx.State, optax.OptState], windows: Int[Array, "b t_plus_1"]
    ) -> tuple[tuple[nnx.State, optax.OptState], Float[Array, ""]]:
        p, opt = state
        loss, grads = jax.value_and_grad(loss_fn)(p, windows)
        updates, opt = optimizer.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    eval_step = jax.jit(
        lambda p, w: evaluate(
            lambda tokens: lm_logits(graphdef, p, tokens, cfg.train.compute_dtype), w, bpt
        )
    )

    out_dir = pretrain_dir(cfg, runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    state = (params, optimizer.init(params))
    steps = cfg.train.steps
    t0 = time.perf_counter()
    running: list[jax.Array] = []
    with (out_dir / "metrics.jsonl").open("w") as metrics_file:

        def record(step: int, values: dict[str, float]) -> None:
            metrics_file.write(json.dumps({"step": step, **values}) + "\n")
            metrics_file.flush()
            if log:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
                elapsed = time.perf_counter() - t0
                print(f"pretrain {cfg.run_name} step {step:>6d}/{steps}  {shown}  ({elapsed:.1f}s)")

        record(0, {k: float(v) for k, v in eval_step(state[0], val).items()})
        for step in range(steps):
            state, loss = train_step(state, next(batches))
            running.append(loss)
            done = step + 1
            values: dict[str, float] = {}
            if done % cfg.train.log_every == 0 or done == steps:
                values["train/loss"] = float(np.mean(jax.device_get(running)))
                running = []
            if done % cfg.train.eval_every == 0 or done == steps:
                values |= {k: float(v) for k, v in eval_step(state[0], val).items()}
            if values:
                record(done, values)

    model = nnx.merge(graphdef, state[0])
    ckpt = out_dir / "checkpoint"
    if ckpt.exists():  # a rerun retrains from scratch and replaces the cached model
        shutil.rmtree(ckpt)
    save_module(ckpt, steps, model, data_state=batches.get_state())
    return model


def load_pretrained(cfg: PretrainConfig, runs_dir: Path = RUNS_DIR) -> Llama | GPT2:
    """The cached pretrained model if its checkpoint exists, else pretrain it first."""
    ckpt = pretrain_dir(cfg, runs_dir) / "checkpoint"
    if latest_step(ckpt) is None:
        print(f"no pretrained model at {ckpt}; pretraining it first")
        return pretrain(cfg, runs_dir)
    return restore_module(ckpt, build_llama(cfg))
