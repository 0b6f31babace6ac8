"""The plan report: per-device bytes, the largest arrays, FLOPs, collectives and a verdict
against a memory budget, as a JSON-able dict and as text (SPEC S13.5)."""

from __future__ import annotations

from typing import Any

import jax

from param_decomp.config.schema import DecomposeConfig, HFTarget
from param_decomp.plan.abstract_step import AbstractStep
from param_decomp.plan.flops import closed_form_flops
from param_decomp.plan.hlo import collectives
from param_decomp.plan.memory_fit import GIB, _shard_bytes, format_bytes

# Peak dense FLOP/s of one accelerator (vendor data sheets, dense, no sparsity).
PEAK_PRESETS: dict[str, float] = {
    "h100-bf16": 989e12,
    "h100-fp32": 67e12,
    "tpu-v5p-bf16": 459e12,
}
TOP_ARRAYS = 10


def _path_str(path: tuple) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return ".".join(n for n in names if n != "value")


def _leaves(tree: Any, prefix: str) -> list[tuple[str, Any]]:
    return [
        (f"{prefix}.{_path_str(p)}".rstrip("."), leaf)
        for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


def _category(name: str) -> str:
    if name.startswith("target."):
        return "target"
    if name.startswith("batch"):
        return "batch"
    if name.startswith("state.params."):
        return "components" if ".components." in f".{name}." else "ci_function"
    if name.startswith("state.opt_state"):
        return "optimizer"
    if name.startswith("state.adversary"):
        return "adversary"
    return "scalars"


CATEGORY_LABELS = {
    "target": "frozen target weights",
    "components": "V/U",
    "ci_function": "CI-function params",
    "optimizer": "optimizer state (AdamW moments)",
    "adversary": "persistent adversary state",
    "scalars": "step, RNG key, NaN marker, density-target multipliers",
    "batch": "batch",
}


def array_table(step: AbstractStep) -> list[dict[str, Any]]:
    """Every argument of the step: name, category, global shape, dtype, spec, bytes/device."""
    rows = []
    leaves = (
        _leaves(step.state.params, "state.params")
        + _leaves(step.state.opt_state, "state.opt_state")
        + _leaves(step.state.adversary, "state.adversary")
        + _leaves(step.state.multipliers, "state.multipliers")
        + [("state.step", step.state.step), ("state.key", step.state.key)]
        + [("state.first_nonfinite_step", step.state.first_nonfinite_step)]
        + _leaves(step.target_state, "target")
        + [("batch", step.batch)]
    )
    for name, leaf in leaves:
        rows.append(
            {
                "name": name,
                "category": _category(name),
                "shape": [int(d) for d in leaf.shape],
                "dtype": str(leaf.dtype),
                "spec": str(leaf.sharding.spec),
                "bytes_per_device": _shard_bytes(leaf, leaf.sharding),
            }
        )
    return rows


def _memory(compiled: Any) -> dict[str, int]:
    mem = compiled.memory_analysis()
    keys = ("argument", "output", "alias", "temp", "generated_code")
    return {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in keys}


def levers(cfg: DecomposeConfig, by_cat: dict[str, int], temp: int) -> list[str]:
    """What would shrink the largest terms, each naming its config key (only levers not
    already pulled); largest term first."""
    mesh, train = cfg.mesh, cfg.train
    options: list[tuple[int, str]] = []
    if by_cat["target"]:
        if mesh.shard_target_weights:
            hint = "a larger mesh.fsdp (the frozen target's 2-D weights are split over it)"
        else:
            hint = (
                "mesh.fsdp > 1 with mesh.shard_target_weights: true (splits the frozen target's "
                "2-D weights over fsdp)"
            )
        if isinstance(cfg.target, HFTarget) and cfg.target.dtype == "float32":
            hint += "; or the target held in bf16 (target.dtype: bfloat16)"
        options.append((by_cat["target"], hint))
    options.append(
        (
            by_cat["components"] + by_cat["ci_function"],
            "a larger mesh.tensor (V/U and the per-component CI weights are split over C); or a "
            "smaller decomposition.C / fewer decomposition.sites",
        )
    )
    moment_hints = []
    if train.optimizer.moment_dtype == "float32":
        moment_hints.append("train.optimizer.moment_dtype: bfloat16 (halves it, S10.5)")
    if not mesh.shard_optimizer_state:
        moment_hints.append(
            "mesh.shard_optimizer_state: true (splits it over the batch axes data x fsdp, S13.6)"
        )
    if moment_hints:
        options.append((by_cat["optimizer"], "optimizer state: " + "; ".join(moment_hints)))
    temp_hints = []
    remat_missing = [p for p in ("masked_forwards", "faithfulness") if p not in train.remat]
    if remat_missing:
        temp_hints.append(f"train.remat: {sorted(set(train.remat) | set(remat_missing))} (S15.9)")
    temp_hints.append(
        "train.micro_batches > 1 (gradient accumulation: one micro-batch's activations live, S10.4)"
    )
    temp_hints.append(
        "a smaller train.batch_size or more batch shards (mesh.data x mesh.fsdp): the "
        "activations scale with the rows each device holds"
    )
    options.append((temp, "temporaries: " + "; ".join(temp_hints)))
    options.sort(key=lambda o: -o[0])
    return [f"{text} [acts on {format_bytes(n)}]" for n, text in options if n > 0]


def levers_in_effect(cfg: DecomposeConfig) -> dict[str, Any]:
    """The memory levers this config pulls (issue 12), as the report states them."""
    train = cfg.train
    return {
        "compute_dtype": train.compute_dtype,
        "moment_dtype": train.optimizer.moment_dtype,
        "shard_optimizer_state": cfg.mesh.shard_optimizer_state,
        "shard_target_weights": cfg.mesh.shard_target_weights,
        "remat": list(train.remat),
        "micro_batches": train.micro_batches,
    }


def build_report(
    cfg: DecomposeConfig,
    step: AbstractStep,
    compiled: Any,
    budget_gib: float,
    peak_flops: float | None,
    compile_s: float,
) -> dict[str, Any]:
    """The report of the compiled step (see the module docstring); JSON-able."""
    n_devices = step.plan.mesh.size
    arrays = array_table(step)
    by_cat = {c: 0 for c in CATEGORY_LABELS}
    for row in arrays:
        by_cat[row["category"]] += row["bytes_per_device"]
    mem = _memory(compiled)
    # live at the peak: the arguments, the outputs not written in place of a donated
    # argument, and XLA's temporaries (activations, gradients, workspace)
    total = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    rows = cfg.train.batch_size * (step.lm[0] if step.lm else 1)
    closed = closed_form_flops(
        step.objective,
        step.site_shapes,
        step.site_C,
        step.all_site_shapes,
        rows,
        step.lm,
        {k: int(v) for k, v in step.plan.mesh.shape.items()},
        cfg.train.micro_batches,
    )
    cost = compiled.cost_analysis()
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    peaks = dict(PEAK_PRESETS)
    if peak_flops is not None:
        peaks["custom"] = peak_flops
    budget = int(budget_gib * GIB)
    fits = total <= budget
    return {
        "config": cfg.run_name,
        "devices": n_devices,
        "mesh": {k: int(v) for k, v in step.plan.mesh.shape.items()},
        "shard_target_weights": cfg.mesh.shard_target_weights,
        "levers_in_effect": levers_in_effect(cfg),
        "sites": {s: {"shape": list(step.site_shapes[s]), "C": c} for s, c in step.site_C.items()},
        "bytes_per_device": {
            **by_cat,
            "arguments": mem["argument"],
            "outputs": mem["output"],
            "aliased": mem["alias"],
            "temporaries": mem["temp"],
            "total": total,
        },
        "largest_arrays": sorted(arrays, key=lambda r: -r["bytes_per_device"])[:TOP_ARRAYS],
        "flops": {
            "xla_per_device": xla_flops,
            "xla_sum_over_devices": xla_flops * n_devices,
            "closed_form": closed,
            "micro_batches": cfg.train.micro_batches,
        },
        "step_seconds_at_peak": {name: xla_flops / peak for name, peak in peaks.items()},
        "peak_flops": peaks,
        "collectives": collectives(compiled.as_text()),
        "budget_gib": budget_gib,
        "fits": fits,
        "levers": [] if fits else levers(cfg, by_cat, mem["temp"]),
        "compile_seconds": compile_s,
    }


def _gib(n: float) -> str:
    """Bytes in the largest unit that keeps the number at least 1 (B, KiB, MiB, GiB)."""
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:9.2f} {unit}"
    return f"{n:9.0f} B  "


def format_report(report: dict[str, Any]) -> str:
    """The report as a screen of text."""
    b = report["bytes_per_device"]
    mesh = " x ".join(f"{a} {n}" for a, n in report["mesh"].items())
    lines = [
        f"plan {report['config']}: {report['devices']} devices, mesh {mesh}"
        + (", target weights over fsdp" if report["shard_target_weights"] else ""),
        "levers: " + ", ".join(f"{k} {v}" for k, v in report["levers_in_effect"].items()),
        "",
        "bytes per device",
    ]
    for cat, label in CATEGORY_LABELS.items():
        lines.append(f"  {label:<40} {_gib(b[cat])}")
    lines += [
        f"  {'activations/temporaries (XLA temp)':<40} {_gib(b['temporaries'])}",
        f"  {'outputs not in place of donated args':<40} {_gib(b['outputs'] - b['aliased'])}",
        f"  {'total (args + outputs - aliased + temp)':<40} {_gib(b['total'])}",
        "",
        "largest arrays (per device)",
    ]
    for row in report["largest_arrays"]:
        shape = "x".join(map(str, row["shape"])) or "scalar"
        lines.append(
            f"  {row['name']:<48} {shape:>16} {row['dtype']:<8} {row['spec']:<28} "
            f"{_gib(row['bytes_per_device'])}"
        )
    f = report["flops"]
    lines += [
        "",
        f"FLOPs per step per device: XLA {f['xla_per_device']:.3e}, closed form "
        f"{f['closed_form']['per_device']:.3e} (whole mesh {f['closed_form']['step_total']:.3e}; "
        f"{f['closed_form']['masked_forwards']} masked forwards, SPEC S13.5)",
        "step time at peak (XLA FLOPs per device / peak): "
        + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in report["step_seconds_at_peak"].items()),
    ]
    if f.get("micro_batches", 1) > 1:
        lines.append(
            f"  (train.micro_batches {f['micro_batches']}: XLA's FLOPs do not follow the "
            "micro-batch loop, read the closed form; the collectives below count its body once, "
            "not once per micro-batch; S10.4)"
        )
    lines += ["", "collectives per step per device (count, bytes)"]
    for op, c in report["collectives"].items():
        lines.append(f"  {op:<20} {c['count']:6d} {_gib(c['bytes'])}")
    verdict = "fits" if report["fits"] else "does NOT fit"
    lines += [
        "",
        f"verdict: {_gib(b['total']).strip()} per device {verdict} in {report['budget_gib']} GiB",
    ]
    if report["levers"]:
        lines.append("what would help:")
        lines += [f"  - {text}" for text in report["levers"]]
    return "\n".join(lines)
