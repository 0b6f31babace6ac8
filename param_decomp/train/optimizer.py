"""AdamW with the configured schedule, optional global-norm clipping and the moments' storage
dtype (S10.3, S10.5).

float32 moments are optax's own AdamW. bfloat16 moments halve the optimizer state (a memory
lever, issue 12): optax's `mu_dtype` narrows the first moment only, so the second moment needs
the small transform below, which updates both moments in float32 and stores them rounded.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from param_decomp.config.schema import Optimizer
from param_decomp.train.schedules import schedule_value

ADAM_EPS = 1e-8  # optax.adamw's default, which the float32 path uses


class NarrowAdamState(NamedTuple):
    """Adam's moments stored in a narrow dtype, with the update count."""

    count: jax.Array
    mu: Any
    nu: Any


def scale_by_adam_narrow_moments(
    b1: float, b2: float, eps: float, moment_dtype: Any
) -> optax.GradientTransformation:
    """Adam's direction with mu and nu stored in `moment_dtype`: each step reads them in
    float32, updates, bias-corrects and divides in float32, then rounds only the stored
    moments (S10.5). With float32 it is Adam's direction exactly."""

    def init(params: Any) -> NarrowAdamState:
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, moment_dtype), params)
        return NarrowAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(grads: Any, state: NarrowAdamState, params: Any = None) -> tuple[Any, Any]:
        del params
        count = optax.safe_increment(state.count)
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        mu = jax.tree.map(lambda m, g: b1 * f32(m) + (1 - b1) * f32(g), state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * f32(v) + (1 - b2) * jnp.square(f32(g)), state.nu, grads)
        t = count.astype(jnp.float32)
        mu_hat_scale = 1.0 / (1.0 - b1**t)
        nu_hat_scale = 1.0 / (1.0 - b2**t)
        updates = jax.tree.map(
            lambda m, v, g: ((m * mu_hat_scale) / (jnp.sqrt(v * nu_hat_scale) + eps)).astype(
                g.dtype
            ),
            mu,
            nu,
            grads,
        )
        store = lambda tree: jax.tree.map(lambda x: x.astype(moment_dtype), tree)  # noqa: E731
        return updates, NarrowAdamState(count, store(mu), store(nu))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: Optimizer, total_steps: int) -> optax.GradientTransformation:
    def lr(step: int) -> object:
        return schedule_value(step, cfg.lr, cfg.schedule, total_steps)

    if cfg.moment_dtype == "float32":
        adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    else:
        adamw = optax.chain(
            scale_by_adam_narrow_moments(cfg.b1, cfg.b2, ADAM_EPS, jnp.dtype(cfg.moment_dtype)),
            optax.add_decayed_weights(cfg.weight_decay),
            optax.scale_by_learning_rate(lr),
        )
    if cfg.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
