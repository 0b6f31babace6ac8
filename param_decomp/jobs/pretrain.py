"""The `pretrain` job: an LM target (Llama or GPT-2) trained on text, cached under runs/targets/.

The run goes through the shared run loop (train/run_loop.py); its checkpoints at
runs/targets/<run_name>/checkpoints/<step> hold the item `model` (the full `nnx.state`), the
same layout as the toy targets, so a decomposition restores it like any other target. The loss is
chosen by the config's `objective` block and built only from `param_decomp.losses.lm_objectives`,
the same functions the decomposition's LM loss terms use.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import mesh_problems
from param_decomp.config.pretrain_schema import Objective, PretrainConfig
from param_decomp.data.pipeline import TextBatches, fixed_windows
from param_decomp.data.token_store import prepare_tokens
from param_decomp.jobs.target_cache import cached_or_trained
from param_decomp.losses import lm_objectives as lm
from param_decomp.sharding.mesh import build_mesh
from param_decomp.sharding.plan import PlacementPlan
from param_decomp.targets.build import build_lm
from param_decomp.targets.gpt2 import GPT2
from param_decomp.targets.llama import Llama
from param_decomp.targets.precision import lm_logits
from param_decomp.train.optimizer import make_optimizer
from param_decomp.train.run_dir import RUNS_DIR, prepare_run_dir, target_run_dir
from param_decomp.train.run_loop import STOP, Job, run_job
from param_decomp.train.step import moment_shardings

LossFn = Callable[[Float[Array, "b t v"], Int[Array, "b t"]], Float[Array, ""]]


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


def _pretrain_mesh(
    cfg: PretrainConfig, config_path: str, devices: list[jax.Device] | None
) -> jax.sharding.Mesh:
    """The configured mesh (S13.1 checks, before anything compiles): batch rows over
    (data, fsdp); the LM's weights replicated, or over fsdp with `shard_target_weights`."""
    devices = jax.devices() if devices is None else devices
    problems = mesh_problems(cfg.mesh, len(devices), (("train.batch_size", cfg.train.batch_size),))
    if cfg.mesh.tensor != 1:
        problems.append(("mesh.tensor", "pretraining shards over data and fsdp only; use 1"))
    if problems:
        raise ConfigError(config_path, problems)
    return build_mesh(cfg.mesh, devices)


def pretrain(
    cfg: PretrainConfig,
    runs_dir: Path = RUNS_DIR,
    log: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    config_path: str = "CONFIG",
    devices: list[jax.Device] | None = None,
    run_dir: Path | None = None,
) -> Llama | GPT2:
    """Train from cfg.seed's init on the corpus's train windows (through the grain pipeline),
    in the shared run loop: metrics, periodic checkpoints (items `model` and `training`, with
    the pipeline position), resume and signals; the final step's `model` is the target.

    The run folder is `run_dir` if given (a study's disposable runs), else the cached target's
    `target_run_dir`; tokenizers and token files are always cached under `runs_dir`."""
    seq_len = cfg.seq_len
    out_dir = target_run_dir(cfg.run_name, runs_dir) if run_dir is None else Path(run_dir)
    command = f"param-decomp pretrain {config_path} --runs-dir {runs_dir}"
    with STOP.installed():
        mesh = _pretrain_mesh(cfg, config_path, devices)
        prepare_run_dir(out_dir, cfg.model_dump(mode="json"), resume, overwrite, command)
        store = prepare_tokens(cfg.data, seq_len, Path(runs_dir))
        val_host = fixed_windows(store.val, seq_len, cfg.data.max_val_windows)
        bpt = jnp.asarray(store.tokenizer.bytes_per_token())
        loss_of_logits = make_objective(cfg.objective, bpt)
        model = build_lm(cfg.model, cfg.seed)
        graphdef, params = nnx.split(model)  # every variable of the LM is a trained Param
        optimizer = make_optimizer(cfg.train.optimizer, cfg.train.steps)
        dtype = cfg.train.compute_dtype
        plan = PlacementPlan.for_config(mesh, cfg.mesh)
        param_shardings = plan.target_shardings(params)
        opt_abstract = jax.eval_shape(optimizer.init, params)
        state_shardings = (param_shardings, moment_shardings(opt_abstract, param_shardings, plan))
        batch_sharding = plan.batch(2)
        params = jax.device_put(jax.tree.map(np.asarray, params), param_shardings)
        opt_state = jax.jit(optimizer.init, out_shardings=state_shardings[1])(params)
        val = jax.device_put(val_host, plan.replicated())
        batches = TextBatches(
            store.train,
            seq_len,
            cfg.train.batch_size,
            cfg.seed + 1,
            batch_sharding,
            prefetch=cfg.data.prefetch,
        )

        def loss_fn(p: nnx.State, windows: Int[Array, "b t_plus_1"]) -> Float[Array, ""]:
            logits = lm_logits(graphdef, p, windows[:, :-1], dtype)
            return loss_of_logits(logits, windows[:, 1:])

        @partial(
            jax.jit,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, plan.replicated()),
            donate_argnums=(0,),
        )
        def train_step(
            state: tuple[nnx.State, optax.OptState], windows: Int[Array, "b t_plus_1"]
        ) -> tuple[tuple[nnx.State, optax.OptState], dict[str, Float[Array, ""]]]:
            p, opt = state
            loss, grads = jax.value_and_grad(loss_fn)(p, windows)
            updates, opt = optimizer.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), {"train/loss": loss}

        eval_step = jax.jit(
            lambda p, w: evaluate(lambda tokens: lm_logits(graphdef, p, tokens, dtype), w, bpt),
            out_shardings=plan.replicated(),
        )
        job = Job(
            name=f"pretrain {cfg.run_name}",
            run_dir=out_dir,
            config=cfg.model_dump(mode="json"),
            resume_hint=f"{command} --resume",
            steps=cfg.train.steps,
            state=(params, opt_state),
            step_fn=lambda state, step: train_step(state, next(batches)),
            checkpoint_items=lambda state: {"model": state[0], "training": {"opt": state[1]}},
            from_checkpoint=lambda _, items: (items["model"], items["training"]["opt"]),
            log_every=cfg.train.log_every,
            checkpoint_every=cfg.checkpointing.every or None,
            keep=cfg.checkpointing.keep,
            data=batches,
            evaluate=lambda state: {k: float(v) for k, v in eval_step(state[0], val).items()},
            eval_every=cfg.train.eval_every,
            eval_at_start=True,
            mean_over_window=True,
            show_progress=log,
            print_lines=True,
        )
        state, _ = run_job(job, resume)
    return nnx.merge(graphdef, state[0])


def load_pretrained(
    cfg: PretrainConfig, runs_dir: Path = RUNS_DIR, config_path: str = "CONFIG"
) -> Llama | GPT2:
    """The cached pretrained model if its run finished, else pretrain it (continuing an
    interrupted run from its latest checkpoint)."""
    return cached_or_trained(
        cfg.run_name,
        runs_dir,
        cfg.train.steps,
        lambda: build_lm(cfg.model, cfg.seed),
        lambda resume: pretrain(cfg, runs_dir, resume=resume, config_path=config_path),
        "pretrained model",
        "pretraining",
    )
