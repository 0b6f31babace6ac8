"""Golden family for the learning-rate schedules."""

from __future__ import annotations

import jax.numpy as jnp

from param_decomp.config.schema import Schedule
from param_decomp.goldens.registry import Case, Comparison, compare_tree, register_family
from param_decomp.train.schedules import schedule_value


@register_family("schedules")
def schedules(case: Case) -> list[Comparison]:
    i = case["inputs"]
    kind = str(i["fn_type"]).strip("'\"")
    sched = Schedule(
        kind=kind, warmup_pct=float(i["warmup_pct"]), final_val_frac=float(i["final_val_frac"])
    )
    total = int(i["total_steps"])
    values = schedule_value(jnp.arange(total), float(i["start_val"]), sched, total)
    return compare_tree("", {"values": values}, case["expected"])
