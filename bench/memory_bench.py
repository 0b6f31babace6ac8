"""The memory bench (`memory_by_tensor_size`): per-device bytes of V/U and their optimizer state
on a {data: -1, tensor: t} mesh of simulated CPU devices, t in 1, 2, 4. The device count is
fixed when jax is first imported, so `bench_memory` runs this file as its own process, which
sets the flag before anything imports jax."""

from __future__ import annotations

import os
import sys

MEMORY_DEVICES = 4
if __name__ == "__main__":
    # The worker process: this must happen before jax is imported anywhere in it.
    _flag = f"--xla_force_host_platform_device_count={MEMORY_DEVICES}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
from bench_common import (  # noqa: E402
    REPO,
    RESULTS_DIR,
    batch_sampler,
    common_fields,
    fmt,
    load_config,
    open_session,
    write_result,
)
from speed_bench import SPEED_BENCHES  # noqa: E402

MEMORY_BENCH = "memory_by_tensor_size"
MEMORY_TENSOR_SIZES = (1, 2, 4)
MEMORY_BATCH = 256
MEMORY_STEPS = 2


def memory_analysis(compiled: Any) -> dict[str, int] | None:
    """XLA's per-device byte counts of a compiled step, where the backend reports them."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if mem is None:
        return None
    return {k: int(getattr(mem, k)) for k in dir(mem) if k.endswith("_in_bytes")}


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
        cfg = load_config(config, batch_size=MEMORY_BATCH)
        cfg = cfg.model_copy(
            update={
                "mesh": Mesh(data=-1, tensor=t),
                "decomposition": cfg.decomposition.model_copy(update={"C": C}),
            }
        )
        session = open_session(cfg, config)
        state = session.state
        params = _per_device_bytes(state.params, device0)
        opt = _per_device_bytes(state.opt_state, device0)
        specs = {
            **{f"params{k}": v for k, v in _component_specs(state.params).items()},
            **{f"opt_state{k}": v for k, v in _component_specs(state.opt_state).items()},
        }
        sample = batch_sampler(session)
        batch = sample(0)
        t0 = time.perf_counter()
        compiled = session.train_step.lower(state, session.target_state, batch).compile()
        compile_s = time.perf_counter() - t0
        mem = memory_analysis(compiled)
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
        **common_fields(MEMORY_BENCH),
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
    """Run this file as the worker, with 4 simulated devices, and read back the JSON it writes."""
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        cwd=REPO,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory bench subprocess failed with exit code {proc.returncode}")
    return json.loads((RESULTS_DIR / f"{MEMORY_BENCH}.json").read_text())


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
            f"{fmt(mem.get('argument_size_in_bytes'), '>10')} "
            f"{fmt(mem.get('output_size_in_bytes'), '>10')} "
            f"{fmt(mem.get('temp_size_in_bytes'), '>10')}"
        )


if __name__ == "__main__":
    os.chdir(REPO)  # config paths and runs/ are relative to the repo root
    write_result(bench_memory_worker())
    sys.exit(0)
