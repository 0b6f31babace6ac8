"""Learning-rate schedules with the reference conventions (SPEC S10).

warmup_steps = int(total * warmup_pct), a linear ramp from 0; afterwards
progress = (step - warmup) / (decay_steps - 1) with decay_steps = total - warmup, so the final
value start * final_val_frac is reached exactly at step total - 1.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from param_decomp.config.schema import Schedule


def schedule_value(step: Array | int, start: float, sched: Schedule, total_steps: int) -> Array:
    step = jnp.asarray(step, jnp.float32)
    warmup = int(total_steps * sched.warmup_pct)
    final = start * sched.final_val_frac
    decay_steps = total_steps - warmup
    progress = jnp.clip((step - warmup) / max(decay_steps - 1, 1), 0.0, 1.0)
    if sched.kind == "constant":
        decayed = jnp.full_like(step, start)
    elif sched.kind == "linear":
        decayed = start + (final - start) * progress
    else:
        decayed = final + (start - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    if warmup == 0:
        return decayed
    return jnp.where(step < warmup, start * step / warmup, decayed)
