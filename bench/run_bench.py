"""Benchmarks of the decomposition train step (`make bench`); results go to bench/results/.

Sections (pick with `--only NAME`, repeatable or comma separated):
  tms_5-2                TMS 5-2, batch 4096, the config's full loss set
  resid_mlp_1            ResidMLP-1, batch 2048, d_embed 1000, C 100 per site, full loss set
  llama_tiny             configs/llama_tiny.yaml: 2 layers, d_model 64, 4 MLP sites, C 64
  llama_4x256            4 layers, d_model 256, every MLP site (12), C 512, random weights
  memory_by_tensor_size  per-device bytes of V/U + optimizer state on a {data: -1, tensor: t}
                         mesh of 4 simulated CPU devices, t in 1, 2, 4 (runs in a subprocess,
                         because the device count is fixed when jax is first imported)
  harvest_shakespeare    `param-decomp harvest` tokens/s on the Shakespeare CPU decomposition's
                         shapes (configs/shakespeare_cpu.yaml: 3 layers, d_model 128, SP1024,
                         2432 components), target and decomposition freshly initialised,
                         tokens from the shakespeare corpus through the pipeline
  plan_8b                `param-decomp plan` of the 8B-shaped configs on 8 and 64 simulated
                         devices, several layouts and memory levers (bench/plan_layouts.py;
                         a child per layout, minutes each; reports in bench/results/plan/)

Nothing here asserts on time: the numbers are measurements, written as JSON and printed.
"""

from __future__ import annotations

import os
import sys

MEMORY_WORKER_FLAG = "--memory-worker"
MEMORY_DEVICES = 4
if MEMORY_WORKER_FLAG in sys.argv:
    # Must happen before jax is imported anywhere in this process.
    _flag = f"--xla_force_host_platform_device_count={MEMORY_DEVICES}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import param_decomp  # noqa: E402, F401  (its XLA:CPU defaults must precede jax's backend start)
from param_decomp.study.provenance import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
RUNS_DIR = Path("runs")  # relative to the repo root, like the CLI: target caches are shared

SPEED_BENCHES: dict[str, dict[str, Any]] = {
    "tms_5-2": {"config": "configs/tms_5-2.yaml", "batch": 4096, "steps": 200},
    "resid_mlp_1": {"config": "configs/resid_mlp_1.yaml", "batch": 2048, "steps": 20, "C": 100},
    "llama_tiny": {"config": "configs/llama_tiny.yaml", "batch": 32, "steps": 20, "lm": True},
    "llama_4x256": {"config": "bench/configs/llama_4x256.yaml", "batch": 8, "steps": 5, "lm": True},
}
MEMORY_BENCH = "memory_by_tensor_size"
MEMORY_TENSOR_SIZES = (1, 2, 4)
MEMORY_BATCH = 256
MEMORY_STEPS = 2
PLAN_BENCH = "plan_8b"
HARVEST_BENCH = "harvest_shakespeare"
HARVEST_CONFIG = "configs/shakespeare_cpu.yaml"
HARVEST_TOKENS = 131_072  # 128 batches of 8 windows of 128 tokens
ALL_BENCHES = (*SPEED_BENCHES, MEMORY_BENCH, HARVEST_BENCH, PLAN_BENCH)

MATMUL_SHAPE = (2048, 1000, 1000)  # (m, k, n): a (m, k) @ (k, n) fp32 matmul


# ----------------------------------------------------------------------------- helpers


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _host_cpu() -> str:
    return cpu_model()


def _common_fields(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "device_kind": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "n_devices": jax.device_count(),
        "host_cpu": _host_cpu(),
        "host_cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "load_avg_1min": os.getloadavg()[0],  # other work on the machine skews every timing
        "timestamp": _now(),
    }


def _write(result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _cost_flops(compiled: Any) -> float | None:
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


def _memory_analysis(compiled: Any) -> dict[str, int] | None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if mem is None:
        return None
    return {k: int(getattr(mem, k)) for k in dir(mem) if k.endswith("_in_bytes")}


def _config(path: str, **train_updates: Any) -> Any:
    from param_decomp.config import loading, schema

    cfg = loading.load_decompose_config(path)
    train = cfg.train.model_copy(
        update={"faithfulness_warmup": schema.FaithfulnessWarmup(steps=0), **train_updates}
    )
    return cfg.model_copy(update={"train": train})


def _batches(session: Any) -> Any:
    """step -> global batch, as the training loop draws it."""
    source = getattr(session, "source", None)
    return source.train_batch if source is not None else session.sample


def _session(cfg: Any, config_path: str) -> Any:
    from param_decomp.jobs.decompose import build_session

    return build_session(cfg, config_path, RUNS_DIR, show_progress=False)


# ----------------------------------------------------------------------------- FLOP counts


def best_seconds(f: Any, *args: Any, reps: int) -> float:
    """Best wall time of `reps` calls of an already-jitted f(*args), after one warm-up call."""
    jax.block_until_ready(f(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(reps: int = 10) -> float:
    """Dense fp32 matmul rate of this machine: best of `reps` jitted (m,k) @ (k,n) products."""
    m, k, n = MATMUL_SHAPE
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    best = best_seconds(f, a, b, reps=reps)
    return 2.0 * m * k * n / best / 1e9


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


def _jaxpr_matmul_flops(jaxpr: Any) -> float:
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


# ----------------------------------------------------------------------------- speed benches


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
    cfg = _config(spec["config"], batch_size=spec["batch"])
    if "C" in spec:
        cfg = cfg.model_copy(
            update={"decomposition": cfg.decomposition.model_copy(update={"C": spec["C"]})}
        )
    n_steps = steps or spec["steps"]

    t0 = time.perf_counter()
    session = _session(cfg, spec["config"])
    setup_s = time.perf_counter() - t0
    step_fn, target_state, sample = session.train_step, session.target_state, _batches(session)
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
        **_common_fields(name),
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
    flops_xla = _cost_flops(compiled)
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
            "flops_per_step_jaxpr_matmul_with_dead_code": _jaxpr_matmul_flops(jaxpr),
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
    _set_peak_fractions(result, peak_gflops)
    return result


def _set_peak_fractions(result: dict[str, Any], peak_gflops: float) -> None:
    """Model-FLOP utilisation: analytic matmul FLOPs / step time / measured dense peak."""
    result["matmul_peak_gflops"] = peak_gflops
    result["fraction_of_matmul_peak_analytic_matmul"] = (
        result["gflops_per_s_analytic_matmul"] / peak_gflops
    )
    if result.get("gflops_per_s_xla"):
        result["fraction_of_matmul_peak_xla"] = result["gflops_per_s_xla"] / peak_gflops
    # the step can run no faster than its products at their own shapes
    result["matmul_floor_fraction_of_step"] = result["matmul_floor_s"] / result["s_per_step"]


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


# ----------------------------------------------------------------------------- memory bench


def _path_names(path: tuple) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _per_device_bytes(tree: Any, device: Any) -> dict[str, int]:
    """Bytes of `tree`'s shards on `device`, split into components (V/U), ci_fns and the rest."""
    out = {"components": 0, "ci_fns": 0, "other": 0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not isinstance(leaf, jax.Array):
            continue
        names = _path_names(path)
        kind = "components" if "components" in names else "ci_fns" if "ci_fns" in names else "other"
        out[kind] += sum(s.data.nbytes for s in leaf.addressable_shards if s.device == device)
    return out


def _global_component_bytes(tree: Any) -> int:
    return sum(
        leaf.nbytes
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if isinstance(leaf, jax.Array) and "components" in _path_names(path)
    )


def _component_specs(tree: Any) -> dict[str, str]:
    """PartitionSpec of every component (V/U) leaf: shows at a glance what is sharded."""
    return {
        jax.tree_util.keystr(path): str(getattr(leaf.sharding, "spec", leaf.sharding))
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if isinstance(leaf, jax.Array) and "components" in _path_names(path)
    }


def bench_memory_worker() -> dict[str, Any]:
    """Runs in the 4-device subprocess: one ResidMLP-1 session per tensor size."""
    from param_decomp.config.schema import Mesh

    config = SPEED_BENCHES["resid_mlp_1"]["config"]
    C = SPEED_BENCHES["resid_mlp_1"]["C"]
    device0 = jax.devices()[0]
    rows = []
    for t in MEMORY_TENSOR_SIZES:
        cfg = _config(config, batch_size=MEMORY_BATCH)
        cfg = cfg.model_copy(
            update={
                "mesh": Mesh(data=-1, tensor=t),
                "decomposition": cfg.decomposition.model_copy(update={"C": C}),
            }
        )
        session = _session(cfg, config)
        state = session.state
        params = _per_device_bytes(state.params, device0)
        opt = _per_device_bytes(state.opt_state, device0)
        specs = {
            **{f"params{k}": v for k, v in _component_specs(state.params).items()},
            **{f"opt_state{k}": v for k, v in _component_specs(state.opt_state).items()},
        }
        sample = _batches(session)
        batch = sample(0)
        t0 = time.perf_counter()
        compiled = session.train_step.lower(state, session.target_state, batch).compile()
        compile_s = time.perf_counter() - t0
        mem = _memory_analysis(compiled)
        # a couple of real steps: the sharded step runs and gives the same loss on every mesh
        t0 = time.perf_counter()
        for i in range(MEMORY_STEPS):
            state, metrics = session.train_step(state, session.target_state, sample(i))
            # one step in flight at a time, like the training loop: queued multi-device
            # executions can deadlock XLA:CPU's collectives (jax 0.10.2)
            jax.block_until_ready((state, metrics))
        loss = float(jax.block_until_ready(metrics["train/loss/total"]))
        rows.append(
            {
                "tensor": t,
                "mesh": {k: int(v) for k, v in session.plan.mesh.shape.items()},
                "component_bytes_global": _global_component_bytes(state.params)
                + _global_component_bytes(state.opt_state),
                "per_device_params_bytes": params,
                "per_device_opt_state_bytes": opt,
                "per_device_component_bytes": params["components"] + opt["components"],
                "per_device_ci_fn_bytes": params["ci_fns"] + opt["ci_fns"],
                "per_device_state_bytes": sum(params.values()) + sum(opt.values()),
                "memory_analysis": mem,
                "component_partition_specs": specs,
                "compile_s": compile_s,
                "s_per_step_first_steps": (time.perf_counter() - t0) / MEMORY_STEPS,
                "loss_after_steps": loss,
            }
        )
    base = rows[0]
    for row in rows:
        t = row["tensor"]
        row["component_ratio_vs_t1"] = (
            row["per_device_component_bytes"] / base["per_device_component_bytes"]
        )
        row["expected_component_ratio"] = 1.0 / t
        if row["memory_analysis"] and base["memory_analysis"]:
            row["memory_analysis_ratio_vs_t1"] = {
                k: (v / base["memory_analysis"][k] if base["memory_analysis"][k] else None)
                for k, v in row["memory_analysis"].items()
            }
    return {
        **_common_fields(MEMORY_BENCH),
        "config": config,
        "batch": MEMORY_BATCH,
        "C": C,
        "steps_timed": None,
        "s_per_step": None,
        "steps_per_s": None,
        "compile_s": None,
        "flops": None,
        "gflops_per_s": None,
        "matmul_peak_gflops": None,
        "note": (
            f"{MEMORY_DEVICES} simulated CPU devices (--xla_force_host_platform_device_count); "
            "per-device bytes are device 0's shards; timings here are not speed measurements"
        ),
        "by_tensor_size": rows,
    }


def bench_memory() -> dict[str, Any]:
    """Re-invoke this script with 4 simulated devices and read back the JSON it writes."""
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), MEMORY_WORKER_FLAG],
        cwd=REPO,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory bench subprocess failed with exit code {proc.returncode}")
    return json.loads((RESULTS_DIR / f"{MEMORY_BENCH}.json").read_text())


# ----------------------------------------------------------------------------- output


def bench_harvest(tokens: int = HARVEST_TOKENS) -> dict[str, Any]:
    """Harvest tokens/s with the default settings (top-k 20, context 16, reservoir 20) on the
    Shakespeare CPU decomposition's shapes. Target and decomposition are freshly initialised:
    pretraining and decomposing it take tens of minutes here, and the harvest's work (the clean
    pass, the CI function, the statistics) does not depend on the weights' values, except how
    many tokens fire. `tokens_per_s` leaves out the first batch (the compilation)."""
    import tempfile

    from param_decomp.config.loading import load_decompose_config
    from param_decomp.config.pretrain_schema import load_pretrain_config
    from param_decomp.harvest.settings import HarvestSettings
    from param_decomp.jobs.decompose import new_decomposition
    from param_decomp.jobs.harvest import OpenRun, harvest
    from param_decomp.targets.build import build_lm

    cfg = load_decompose_config(HARVEST_CONFIG)
    target_cfg = load_pretrain_config(cfg.target)
    target = build_lm(target_cfg.model, cfg.seed)
    graphdef, params = nnx.split(new_decomposition(cfg, target))
    with tempfile.TemporaryDirectory() as tmp:
        run = OpenRun(Path(tmp), RUNS_DIR, 0, cfg, target_cfg, target, graphdef, params)
        result = harvest(run, HarvestSettings(tokens=tokens), show_progress=False)
    settings = result.settings
    per_batch = settings["batch_size"] * settings["seq_len"]
    steady = result.seconds - result.first_batch_seconds
    n_components = sum(s["C"] for s in result.summary["sites"].values())
    return {
        **_common_fields(HARVEST_BENCH),
        "config": HARVEST_CONFIG,
        "weights": "freshly initialised target and decomposition",
        "tokens": result.summary["tokens"],
        "batch": settings["batch_size"],
        "seq_len": settings["seq_len"],
        "components": n_components,
        "vocab": int(target_cfg.model.vocab_size),
        "top_k": settings["top_k"],
        "context": settings["context"],
        "reservoir": settings["reservoir"],
        "first_batch_s": result.first_batch_seconds,
        "pass_s": result.seconds,
        "tokens_per_s": (result.batches - 1) * per_batch / steady,
    }


def print_harvest_line(result: dict[str, Any]) -> None:
    print(
        f"{HARVEST_BENCH}: {result['tokens_per_s']:.0f} tokens/s ({result['tokens']} tokens, "
        f"{result['components']} components, batch {result['batch']} x {result['seq_len']}; "
        f"first batch with compilation {result['first_batch_s']:.1f} s)"
    )


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


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
            f"{_fmt(r.get('tokens_per_s'), '>9.0f')} {_fmt(flops and flops / 1e9, '>10.3f')} "
            f"{_fmt(r.get('gflops_per_s_analytic_matmul'), '>8.1f')} "
            f"{_fmt(r.get('fraction_of_matmul_peak_analytic_matmul'), '>6.1%')} "
            f"{_fmt(r.get('matmul_floor_s'), '>9.5f')} {_fmt(r.get('ci_function_s'), '>8.5f')}"
        )
    if results and results[0].get("matmul_peak_gflops"):
        print(f"matmul peak (fp32 {MATMUL_SHAPE}): {results[0]['matmul_peak_gflops']:.1f} GFLOP/s")
    print("GFLOP/step: analytic matmul FLOPs of the step; MFU: their rate / matmul peak;")
    print("mm floor: the step's products timed alone; side-by-side vs the reference:")
    print("`make bench-reference` (bench/results/vs_reference.json)")


def print_memory_table(result: dict[str, Any]) -> None:
    header = (
        f"{'tensor':>6} {'mesh':<22} {'V/U+opt B/dev':>14} {'ratio':>6} {'ci+opt B/dev':>12} "
        f"{'arg B':>10} {'out B':>10} {'temp B':>10}"
    )
    print(f"{MEMORY_BENCH} (ResidMLP-1, C={result['C']}, {result['n_devices']} devices)")
    print(header)
    print("-" * len(header))
    for r in result["by_tensor_size"]:
        mem = r["memory_analysis"] or {}
        print(
            f"{r['tensor']:>6} {json.dumps(r['mesh']):<22} {r['per_device_component_bytes']:>14} "
            f"{r['component_ratio_vs_t1']:>6.3f} {r['per_device_ci_fn_bytes']:>12} "
            f"{_fmt(mem.get('argument_size_in_bytes'), '>10')} "
            f"{_fmt(mem.get('output_size_in_bytes'), '>10')} "
            f"{_fmt(mem.get('temp_size_in_bytes'), '>10')}"
        )


def _parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(ALL_BENCHES)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BENCHES]
    if unknown:
        raise SystemExit(f"unknown bench(es) {unknown}; choose from {list(ALL_BENCHES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only", action="append", help=f"bench(es) to run: {', '.join(ALL_BENCHES)}"
    )
    parser.add_argument("--steps", type=int, help="steps timed per speed bench (default: each's)")
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only the step time (no FLOP counts, matmul floor or peak): for bench-reference",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="the step time and its FLOP counts, without the op-by-op floor (MFU on a GPU)",
    )
    parser.add_argument("--results-dir", type=Path, help="write the JSON here instead")
    parser.add_argument(MEMORY_WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.chdir(REPO)  # config paths and runs/ are relative to the repo root

    if args.memory_worker:
        result = bench_memory_worker()
        _write(result)
        return 0

    names = _parse_only(args.only)
    speed = [n for n in names if n in SPEED_BENCHES]
    results = []
    out_dir = args.results_dir or RESULTS_DIR
    if speed:
        peak = None if args.timing_only or args.flops else matmul_peak_gflops()
        for name in speed:
            results.append(bench_speed(name, args.steps, peak or 0.0, args.timing_only, args.flops))
        if peak is not None:
            # re-measured at the end, best of both: one noisy measurement must not inflate MFU
            peak = max(peak, matmul_peak_gflops())
        for result in results:
            if peak is not None:
                _set_peak_fractions(result, peak)
            print(f"wrote {_write(result, out_dir)}")
    memory = bench_memory() if MEMORY_BENCH in names else None
    if memory is not None:
        print(f"wrote {(RESULTS_DIR / f'{MEMORY_BENCH}.json').relative_to(REPO)}")
    harvest = bench_harvest() if HARVEST_BENCH in names else None
    if harvest is not None:
        print(f"wrote {_write(harvest, out_dir)}")
    print()
    if results:
        print_speed_table(results)
        print()
    if memory is not None:
        print_memory_table(memory)
    if harvest is not None:
        print_harvest_line(harvest)
    if PLAN_BENCH in names:
        # the 8B-shaped plans (bench/plan_layouts.py): a child process per layout, minutes each
        sys.path.insert(0, str(REPO / "bench"))
        import plan_layouts

        plan_layouts.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
