"""The speed benches: one decomposition config's train step timed in steady state, with its
FLOP counts, model-FLOP utilisation, matmul floor, CI-function time and kernel count."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from bench_common import batch_sampler, common_fields, fmt, load_config, open_session
from flop_count import (
    cost_flops,
    jaxpr_matmul_flops,
    previous_analytic_matmul_flops,
    step_matmul_flops,
)
from roofline import (
    MATMUL_SHAPE,
    ci_function_seconds,
    kernel_count,
    matmul_floor,
    session_target,
    trivial_kernel_seconds,
)

SPEED_BENCHES: dict[str, dict[str, Any]] = {
    "tms_5-2": {"config": "configs/tms_5-2.yaml", "batch": 4096, "steps": 200},
    "resid_mlp_1": {"config": "configs/resid_mlp_1.yaml", "batch": 2048, "steps": 20, "C": 100},
    "llama_tiny": {"config": "configs/llama_tiny.yaml", "batch": 32, "steps": 20, "lm": True},
    "llama_4x256": {"config": "bench/configs/llama_4x256.yaml", "batch": 8, "steps": 5, "lm": True},
}


def bench_speed(
    name: str,
    steps: int | None,
    peak_gflops: float,
    timing_only: bool = False,
    flops_only: bool = False,
) -> dict[str, Any]:
    """One speed bench. `timing_only`: the step time alone; `flops_only`: the step time and its
    FLOP counts (XLA's and the jaxpr's products: cheap, for MFU on a GPU), without the matmul
    floor, CI timing and kernel count that the full bench measures op by op."""
    spec = SPEED_BENCHES[name]
    cfg = load_config(spec["config"], batch_size=spec["batch"])
    if "C" in spec:
        cfg = cfg.model_copy(
            update={"decomposition": cfg.decomposition.model_copy(update={"C": spec["C"]})}
        )
    n_steps = steps or spec["steps"]

    t0 = time.perf_counter()
    session = open_session(cfg, spec["config"])
    setup_s = time.perf_counter() - t0
    step_fn, target_state, sample = session.train_step, session.target_state, batch_sampler(session)
    state = session.state

    batch = jax.block_until_ready(sample(0))
    t0 = time.perf_counter()
    state, metrics = step_fn(state, target_state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0

    # one warm step, excluded from the timing
    state, metrics = step_fn(state, target_state, sample(1))
    jax.block_until_ready((state, metrics))

    # steady state: as the training loop runs it (sample + step), synchronised only at the end
    t0 = time.perf_counter()
    for i in range(n_steps):
        state, metrics = step_fn(state, target_state, sample(2 + i))
    jax.block_until_ready((state, metrics))
    s_per_step = (time.perf_counter() - t0) / n_steps
    final_loss = float(metrics["train/loss/total"])

    result = {
        **common_fields(name),
        "config": spec["config"],
        "batch": cfg.train.batch_size,
        "C": cfg.decomposition.C,
        "sites": list(cfg.decomposition.sites),
        "losses": [t.type for t in session.objective.terms],
        "steps_timed": n_steps,
        "s_per_step": s_per_step,
        "steps_per_s": 1.0 / s_per_step,
        "compile_s": compile_s,
        "session_setup_s": setup_s,
        "final_loss_total": final_loss,
    }
    batch = sample(0)
    positions = int(np.prod(session_target(session).batch_shape(batch)))
    if spec.get("lm"):
        result["tokens_per_step"] = positions
        result["tokens_per_s"] = positions / s_per_step
    if timing_only:
        return result

    # FLOPs: XLA's count of the compiled step, and the step's own products from its jaxpr
    compiled = step_fn.lower(state, target_state, batch).compile()  # cached: no recompile
    flops_xla = cost_flops(compiled)
    jaxpr = step_fn.trace(state, target_state, batch).jaxpr.jaxpr
    flops_matmul, products = step_matmul_flops(jaxpr)
    if flops_only:
        result.update(
            {
                "flops_per_step_analytic_matmul": flops_matmul,
                "flops_per_step_xla": flops_xla,
                "gflops_per_s_analytic_matmul": flops_matmul / s_per_step / 1e9,
                "gflops_per_s_xla": flops_xla / s_per_step / 1e9 if flops_xla else None,
            }
        )
        return result
    previous = None if spec.get("lm") else previous_analytic_matmul_flops(session, positions)
    floor = matmul_floor(products)
    ci_s = ci_function_seconds(session, state.params, batch)
    kernels = kernel_count(compiled.as_text())
    # per-site C (site groups) has no global C: time the trivial kernel at the largest one
    widest = cfg.decomposition.C or max(getattr(s, "C", None) or 0 for s in cfg.decomposition.sites)
    per_kernel = trivial_kernel_seconds((positions, widest))
    result.update(
        {
            "flops_per_step_analytic_matmul": flops_matmul,
            "flops_per_step_analytic_matmul_previous": previous["step_total"] if previous else None,
            "flops_analytic_previous_breakdown": previous,
            "flops_per_step_xla": flops_xla,
            "flops_per_step_jaxpr_matmul_with_dead_code": jaxpr_matmul_flops(jaxpr),
            "gflops_per_s_analytic_matmul": flops_matmul / s_per_step / 1e9,
            "gflops_per_s_xla": flops_xla / s_per_step / 1e9 if flops_xla else None,
            "matmul_peak_gflops": peak_gflops,
            "matmul_floor_s": floor["matmul_floor_s"],
            "matmul_floor_products": floor["products"],
            "ci_function_s": ci_s,
            "outside_matmuls_s": s_per_step - floor["matmul_floor_s"],
            "kernels_per_step": kernels,
            "trivial_kernel_s": per_kernel,
            "kernel_floor_s": kernels * per_kernel,
        }
    )
    set_peak_fractions(result, peak_gflops)
    return result


def set_peak_fractions(result: dict[str, Any], peak_gflops: float) -> None:
    """Model-FLOP utilisation: analytic matmul FLOPs / step time / measured dense peak."""
    result["matmul_peak_gflops"] = peak_gflops
    result["fraction_of_matmul_peak_analytic_matmul"] = (
        result["gflops_per_s_analytic_matmul"] / peak_gflops
    )
    if result.get("gflops_per_s_xla"):
        result["fraction_of_matmul_peak_xla"] = result["gflops_per_s_xla"] / peak_gflops
    # the step can run no faster than its products at their own shapes
    result["matmul_floor_fraction_of_step"] = result["matmul_floor_s"] / result["s_per_step"]


def print_speed_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'bench':<12} {'batch':>6} {'s/step':>9} {'tokens/s':>9} {'GFLOP/step':>10} "
        f"{'GFLOP/s':>8} {'MFU':>6} {'mm floor':>9} {'CI fn s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        flops = r.get("flops_per_step_analytic_matmul")
        print(
            f"{r['name']:<12} {r['batch']:>6} {r['s_per_step']:>9.5f} "
            f"{fmt(r.get('tokens_per_s'), '>9.0f')} {fmt(flops and flops / 1e9, '>10.3f')} "
            f"{fmt(r.get('gflops_per_s_analytic_matmul'), '>8.1f')} "
            f"{fmt(r.get('fraction_of_matmul_peak_analytic_matmul'), '>6.1%')} "
            f"{fmt(r.get('matmul_floor_s'), '>9.5f')} {fmt(r.get('ci_function_s'), '>8.5f')}"
        )
    if results and results[0].get("matmul_peak_gflops"):
        print(f"matmul peak (fp32 {MATMUL_SHAPE}): {results[0]['matmul_peak_gflops']:.1f} GFLOP/s")
    print("GFLOP/step: analytic matmul FLOPs of the step; MFU: their rate / matmul peak;")
    print("mm floor: the step's products timed alone; side-by-side vs the reference:")
    print("`make bench-reference` (bench/results/vs_reference.json)")
