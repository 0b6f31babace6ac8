"""AdamW with the configured schedule and optional global-norm clipping (fp32 moments)."""

from __future__ import annotations

import optax

from param_decomp.config.schema import Optimizer
from param_decomp.train.schedules import schedule_value


def make_optimizer(cfg: Optimizer, total_steps: int) -> optax.GradientTransformation:
    def lr(step: int) -> object:
        return schedule_value(step, cfg.lr, cfg.schedule, total_steps)

    adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    if cfg.grad_clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
