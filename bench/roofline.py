"""What bounds the step on this machine: the dense matmul peak, the step's products timed alone
at their own shapes (the matmul floor), the number and cost of its kernels, and the CI
function's time alone."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from bench_common import best_seconds
from flax import nnx

MATMUL_SHAPE = (2048, 1000, 1000)  # (m, k, n): a (m, k) @ (k, n) fp32 matmul


def matmul_peak_gflops(reps: int = 10) -> float:
    """Dense fp32 matmul rate of this machine: best of `reps` jitted (m,k) @ (k,n) products."""
    m, k, n = MATMUL_SHAPE
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    best = best_seconds(f, a, b, reps=reps)
    return 2.0 * m * k * n / best / 1e9


def matmul_floor(products: list[dict[str, Any]], reps: int = 10) -> dict[str, Any]:
    """Each distinct product of the step timed alone (best of `reps`, jitted): the time the
    step's matmuls take at their own shapes on this machine, a lower bound for the step."""
    total, rows = 0.0, []
    for p in products:
        dims = p["dimension_numbers"]
        a = jnp.ones(p["lhs"], jnp.float32)
        b = jnp.ones(p["rhs"], jnp.float32)
        f = jax.jit(lambda x, y, dims=dims: jax.lax.dot_general(x, y, dims))
        best = best_seconds(f, a, b, reps=reps)
        total += best * p["count"]
        rows.append(
            {
                "lhs": p["lhs"],
                "rhs": p["rhs"],
                "count": p["count"],
                "gflop_each": p["flops"] / 1e9,
                "s_each": best,
                "gflops_per_s": p["flops"] / best / 1e9,
            }
        )
    return {"matmul_floor_s": total, "products": rows}


NOT_KERNELS = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")


def kernel_count(hlo_text: str) -> int:
    """Instructions of the compiled step's entry computation that run as kernels (fusions,
    copies, dots, loops): each costs at least one dispatch on XLA:CPU."""
    entry = hlo_text[hlo_text.index("ENTRY") :].split("\n")[1:]
    count = 0
    for line in entry:
        line = line.strip()
        if not line.startswith("%") and not line.startswith("ROOT"):
            continue
        rhs = line.split(" = ", 1)[1] if " = " in line else ""
        op = rhs.split("(", 1)[0].split(" ")[-1]
        if op and op not in NOT_KERNELS:
            count += 1
    return count


def trivial_kernel_seconds(shape: tuple[int, ...], n: int = 100, reps: int = 5) -> float:
    """The cheapest kernel on this backend at the step's (positions, C) shape: one affine
    elementwise op, n of them kept apart by optimization barriers, best of `reps`."""

    def chain(x: Any) -> Any:
        for _ in range(n):
            x = jax.lax.optimization_barrier(x * 1.0001 + 0.5)
        return x

    f = jax.jit(chain)
    x = jnp.ones(shape, jnp.float32)
    best = best_seconds(f, x, reps=reps)
    return best / n


def session_target(session: Any) -> Any:
    return nnx.merge(session.target_graphdef, session.target_state)


def ci_function_seconds(session: Any, params: Any, batch: Any, reps: int = 10) -> float:
    """The CI function alone, forward and backward, on the batch's recorded site inputs and
    inner activations held fixed: the elementwise part of the step that no product sharing
    removes (the per-component MLPs are B*C*hidden GELUs per site)."""
    from param_decomp.decomposition.masked_forward import clean_forward, inner_acts

    graphdef = session.graphdef
    target = session_target(session)
    model = nnx.merge(graphdef, params)
    _, record = clean_forward(target, batch, model.site_names)
    acts = inner_acts(record, model.all_VU())

    def loss(p: Any) -> Any:
        m = nnx.merge(graphdef, p)
        lower, upper = m.causal_importances(m.ci_taps(record), m.all_VU(), acts)
        return sum(jnp.sum(lower[s] * upper[s]) for s in lower)

    f = jax.jit(jax.grad(loss))
    best = best_seconds(f, params, reps=reps)
    return best
