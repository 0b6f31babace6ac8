"""AdamW with the configured schedule, optional global-norm clipping (of every gradient, or of
the components and the CI function apart) and the moments' storage dtype (S10.3, S10.5, S10.6).

float32 moments are optax's own AdamW. bfloat16 moments halve the optimizer state (a memory
lever, issue 12): optax's `mu_dtype` narrows the first moment only, so the second moment needs
the small transform below, which updates both moments in float32 and stores them rounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from param_decomp.config.schema import DecompositionOptimizer, Optimizer
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


COMPONENTS = "components"  # the decomposition's top-level key of every V and U (S10.6)


def _top_key(path: tuple[Any, ...]) -> str:
    entry = path[0]
    return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))


def clip_by_group_norm(
    max_norms: dict[str, float], group_of: Callable[[str], str]
) -> optax.GradientTransformation:
    """Global-norm clipping per group of leaves (S10.6): a leaf's group is `group_of` of its
    top-level key; a group with a limit is scaled by min(1, limit / its own global norm), a group
    without one passes unchanged. Stateless."""

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(grads)
        named = [(group_of(_top_key(path)), g) for path, g in with_paths]
        scale = {}
        for name, limit in max_norms.items():
            squares = [jnp.sum(jnp.square(g)) for n, g in named if n == name]
            if squares:
                norm = jnp.sqrt(sum(squares))
                scale[name] = jnp.where(norm > limit, limit / norm, 1.0)
        out = [g * scale[n].astype(g.dtype) if n in scale else g for n, g in named]
        return treedef.unflatten(out), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def gradient_clipping(cfg: Optimizer) -> optax.GradientTransformation | None:
    """The configured clipping (S10.3's one global norm or S10.6's two groups), or None."""
    if cfg.grad_clip_norm is not None:
        return optax.clip_by_global_norm(cfg.grad_clip_norm)
    if not isinstance(cfg, DecompositionOptimizer):
        return None
    limits = {
        COMPONENTS: cfg.grad_clip_norm_components,
        "ci_function": cfg.grad_clip_norm_ci_function,
    }
    limits = {k: v for k, v in limits.items() if v is not None}
    if not limits:
        return None
    return clip_by_group_norm(
        limits, lambda key: COMPONENTS if key == COMPONENTS else "ci_function"
    )


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
    clipping = gradient_clipping(cfg)
    return adamw if clipping is None else optax.chain(clipping, adamw)
