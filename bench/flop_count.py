"""FLOP counts of a compiled train step: XLA's own, the step's dense products read from its
jaxpr (the analytic count MFU divides by), and the closed-form count of the step before the
shared products of S9.4, kept so the JSON shows both."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx


def cost_flops(compiled: Any) -> float | None:
    """XLA's own FLOP count of a compiled executable, when the backend reports one."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if flops > 0 else None


def _dot_generals(jaxpr: Any) -> list[Any]:
    """Every dot_general equation, recursing into sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += _dot_generals(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += _dot_generals(sub)
    return found


def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contract = int(np.prod([lhs_shape[i] for i in lhs_contract]))
    return 2.0 * int(np.prod(eqn.outvars[0].aval.shape)) * contract


def jaxpr_matmul_flops(jaxpr: Any) -> float:
    """2 * out_size * contraction_size over every dot_general (dead code included)."""
    return sum(_dot_flops(e) for e in _dot_generals(jaxpr))


def _live_jaxpr(jaxpr: Any) -> Any:
    """The jaxpr with dead code removed, as XLA runs it (e.g. the clean upstream layers that a
    masked forward skips by reading the recorded site outputs, S9.4)."""
    from jax._src.interpreters import partial_eval as pe

    live, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return live


def step_matmul_flops(jaxpr: Any) -> tuple[float, list[dict[str, Any]]]:
    """Analytic dense-matmul FLOPs of the step as it runs (2*m*k*n of every product left after
    dead-code elimination: forward, backward, optimizer), and the distinct product shapes with
    how often each occurs (for the matmul floor)."""
    shapes: dict[tuple, dict[str, Any]] = {}
    total = 0.0
    for eqn in _dot_generals(_live_jaxpr(jaxpr)):
        flops = _dot_flops(eqn)
        total += flops
        lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
        key = (lhs, rhs, str(eqn.params["dimension_numbers"]))
        entry = shapes.setdefault(
            key,
            {
                "lhs": list(lhs),
                "rhs": list(rhs),
                "dimension_numbers": eqn.params["dimension_numbers"],
                "flops": flops,
                "count": 0,
            },
        )
        entry["count"] += 1
    return total, sorted(shapes.values(), key=lambda e: -e["flops"] * e["count"])


def previous_analytic_matmul_flops(session: Any, batch: int) -> dict[str, float]:
    """Dense-matmul FLOPs of one step BEFORE the shared products of S9.4 (the count used until
    2026-11-26, kept so the JSON shows both): every masked forward recomputes x @ V and
    x @ (W - V U) at every live site.

    forward = clean forward + CI function + every masked forward the objective's plans run +
    faithfulness (V @ U per site). The clean forward is under stop_gradient, so it is counted
    once; everything else is differentiated and counted 3x (forward + ~2x backward).
    """
    cfg = session.cfg
    C = cfg.decomposition.C
    sites = tuple(cfg.decomposition.sites)
    target = nnx.merge(session.target_graphdef, session.target_state)
    weights = target.site_weights()
    B = batch

    def dense(shape: tuple[int, ...]) -> float:
        return 2.0 * B * shape[0] * shape[1]

    site_dense = {s: dense(tuple(w.shape)) for s, w in weights.items()}
    extra = 0.0
    if hasattr(target, "W_E"):  # ResidMLP embed and unembed
        f, d = target.W_E[...].shape
        extra = 2 * (2.0 * B * f * d)
    clean = sum(site_dense.values()) + extra

    def decomposed(s: str, delta: bool) -> float:
        d_in, d_out = weights[s].shape
        out = 2.0 * B * d_in * C + 2.0 * B * C * d_out
        if delta:
            out += 2.0 * d_in * C * d_out + 2.0 * B * d_in * d_out
        return out

    masked = 0.0
    for plan in session.objective.plans:
        live_sets = [(s,) for s in sites] if plan.routing == "each" else [sites]
        for live in live_sets:
            swapped = sum(decomposed(s, plan.delta) - site_dense[s] for s in live)
            fwd = clean + swapped
            masked += plan.n_mask_samples * fwd

    ci_cfg = cfg.decomposition.ci_function
    ci = 0.0
    ci_mlp_elementwise = 0.0  # per-component scalar MLPs: broadcast multiplies, not matmuls
    for s in sites:
        d_in = weights[s].shape[0]
        if ci_cfg.type == "per_component_mlp":
            widths = [1, *ci_cfg.hidden, 1]
            ci += 2.0 * B * d_in * C  # inner acts x @ V
            ci_mlp_elementwise += sum(
                2.0 * B * C * a * b for a, b in zip(widths[:-1], widths[1:], strict=False)
            )
        elif ci_cfg.type == "per_site_mlp":
            widths = [d_in, *ci_cfg.hidden, C]
            ci += sum(2.0 * B * a * b for a, b in zip(widths[:-1], widths[1:], strict=False))
    if ci_cfg.type == "global_mlp":
        widths = [sum(weights[s].shape[0] for s in sites), *ci_cfg.hidden, C * len(sites)]
        ci += sum(2.0 * B * a * b for a, b in zip(widths[:-1], widths[1:], strict=False))

    faithful = sum(2.0 * weights[s].shape[0] * C * weights[s].shape[1] for s in sites)
    forward = clean + ci + masked + faithful
    return {
        "clean_forward": clean,
        "ci_forward": ci,
        "ci_mlp_forward_elementwise_not_counted": ci_mlp_elementwise,
        "masked_forwards": masked,
        "faithfulness_forward": faithful,
        "forward_total": forward,
        "step_total": clean + 3.0 * (ci + masked + faithful),
    }
