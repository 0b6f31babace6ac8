"""The 8B-shaped plans of `make bench` (issue 12, acceptance 3): `param-decomp plan` of the
Llama-3-8B- and Qwen3-8B-shaped decompositions on 8 and 64 simulated devices, several mesh
layouts and memory levers, one report JSON per layout under bench/results/plan/ and a summary
bench/results/plan_8b.json (bytes per device by category, total, fits in 60 / 80 GiB, XLA FLOPs,
compile seconds and the planner's peak RSS).

Each plan compiles the full 32- or 36-layer step: minutes per layout on a 2-core CPU.
`python bench/plan_layouts.py [NAME ...]` runs some (`--summary` only re-summarises the reports
there are); `make bench` runs them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PLAN_DIR = RESULTS / "plan"
SUMMARY = RESULTS / "plan_8b.json"
LLAMA = "configs/plan/llama3_8b.yaml"
QWEN = "configs/plan/qwen3_8b.yaml"
LLAMA_8L = "bench/configs/llama3_8b_8layers.yaml"  # 8 of the 32 layers: the lever ablation
H100_GIB = 80.0
TARGET_GIB = 60.0  # the bound for every device of the 64 x H100 layout
GIB = 2**30

BF16_MOMENTS = "train.optimizer.moment_dtype=bfloat16"
ZERO = "mesh.shard_optimizer_state=true"
REMAT = "train.remat=[masked_forwards,faithfulness]"

# name -> (config, devices, mesh, overrides); every lever is a `--set` of a config key
LAYOUTS: dict[str, tuple[str, int, str, tuple[str, ...]]] = {
    "llama3_8b_d8_fsdp2_tensor4": (LLAMA, 8, "data=1,fsdp=2,tensor=4", ()),
    "llama3_8b_d8_fsdp8": (LLAMA, 8, "data=1,fsdp=8,tensor=1", ()),
    "llama3_8b_d8_fsdp2_tensor4_levers": (
        LLAMA,
        8,
        "data=1,fsdp=2,tensor=4",
        (BF16_MOMENTS, ZERO, REMAT, "train.micro_batches=4"),
    ),
    "llama3_8b_d64_data8_tensor8": (LLAMA, 64, "data=8,fsdp=1,tensor=8", ()),
    "llama3_8b_d64_fsdp8_tensor8": (LLAMA, 64, "data=1,fsdp=8,tensor=8", ()),
    "llama3_8b_d64_fsdp16_tensor4": (
        LLAMA,
        64,
        "data=1,fsdp=16,tensor=4",
        ("train.batch_size=16", "eval.batch_size=16"),
    ),
    "llama3_8b_d64_fsdp8_tensor8_levers": (
        LLAMA,
        64,
        "data=1,fsdp=8,tensor=8",
        (BF16_MOMENTS, ZERO, "train.batch_size=16", "train.micro_batches=2"),
    ),
    # one lever at a time on the 8-layer cut, 64 devices, fsdp 8 x tensor 8 (batch 16: so
    # that 2 micro-batches still split over the 8 batch shards)
    "ablation_8l_d64_base": (LLAMA_8L, 64, "data=1,fsdp=8,tensor=8", ("train.batch_size=16",)),
    "ablation_8l_d64_bf16_moments": (
        LLAMA_8L,
        64,
        "data=1,fsdp=8,tensor=8",
        ("train.batch_size=16", BF16_MOMENTS),
    ),
    "ablation_8l_d64_zero": (LLAMA_8L, 64, "data=1,fsdp=8,tensor=8", ("train.batch_size=16", ZERO)),
    "ablation_8l_d64_remat": (
        LLAMA_8L,
        64,
        "data=1,fsdp=8,tensor=8",
        ("train.batch_size=16", REMAT),
    ),
    "ablation_8l_d64_micro2": (
        LLAMA_8L,
        64,
        "data=1,fsdp=8,tensor=8",
        ("train.batch_size=16", "train.micro_batches=2"),
    ),
    "ablation_8l_d64_bf16_compute": (
        LLAMA_8L,
        64,
        "data=1,fsdp=8,tensor=8",
        ("train.batch_size=16", "train.compute_dtype=bfloat16"),
    ),
    "qwen3_8b_d64_fsdp8_tensor8_levers": (
        QWEN,
        64,
        "data=1,fsdp=8,tensor=8",
        (BF16_MOMENTS, ZERO, "train.batch_size=16", "train.micro_batches=2"),
    ),
}


def plan_one(name: str) -> dict[str, Any]:
    """Run `param-decomp plan` for one layout; its report (exit 1 = over 80 GiB is a result,
    not a failure)."""
    config, devices, mesh, overrides = LAYOUTS[name]
    out = PLAN_DIR / f"{name}.json"
    argv = [sys.executable, "-m", "param_decomp.cli", "plan", config, "--devices", str(devices)]
    argv += ["--mesh", mesh, "--budget-gib", str(H100_GIB), "--json", str(out)]
    for text in overrides:
        argv += ["--set", text]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, check=False, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"plan {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(out.read_text())
    report["bench"] = {
        "name": name,
        "overrides": list(overrides),
        "wall_seconds": time.perf_counter() - t0,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_row(report: dict[str, Any]) -> dict[str, Any]:
    b = report["bytes_per_device"]
    return {
        "name": report["bench"]["name"],
        "config": report["config"],
        "devices": report["devices"],
        "mesh": report["mesh"],
        "levers_in_effect": report["levers_in_effect"],
        "gib_per_device": {
            k: round(b[k] / GIB, 3)
            for k in ("target", "components", "ci_function", "optimizer", "temporaries", "total")
        },
        "fits_80_gib": b["total"] <= H100_GIB * GIB,
        "under_60_gib": b["total"] <= TARGET_GIB * GIB,
        "xla_flops_per_device": report["flops"]["xla_per_device"],
        "h100_bf16_ms_at_peak": report["step_seconds_at_peak"]["h100-bf16"] * 1e3,
        "compile_seconds": report["compile_seconds"],
        "planner_peak_rss_gib": round(report["peak_rss_bytes"] / GIB, 3),
        "date": report["bench"]["date"],
    }


def write_summary() -> dict[str, Any]:
    """The summary of every layout whose report exists, in LAYOUTS order."""
    rows = [
        summary_row(json.loads((PLAN_DIR / f"{n}.json").read_text()))
        for n in LAYOUTS
        if (PLAN_DIR / f"{n}.json").exists()
    ]
    result = {
        "name": "plan_8b",
        "note": "param-decomp plan on simulated CPU devices; bytes are per device; see "
        "docs/scale.md",
        "layouts": rows,
    }
    SUMMARY.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_summary(result: dict[str, Any]) -> None:
    print(f"{'layout':<38} {'total GiB':>9} {'temp':>7} {'opt':>6} {'<60':>4} {'RSS':>5}")
    for r in result["layouts"]:
        g = r["gib_per_device"]
        print(
            f"{r['name']:<38} {g['total']:>9.2f} {g['temporaries']:>7.2f} {g['optimizer']:>6.2f} "
            f"{'yes' if r['under_60_gib'] else 'no':>4} {r['planner_peak_rss_gib']:>5.2f}"
        )


def run(names: list[str] | None = None) -> dict[str, Any]:
    PLAN_DIR.mkdir(parents=True, exist_ok=True)
    for name in names or list(LAYOUTS):
        if name not in LAYOUTS:
            raise SystemExit(f"unknown layout {name!r}; choose from {list(LAYOUTS)}")
        report = plan_one(name)
        print(f"{name}: {report['bytes_per_device']['total'] / GIB:.2f} GiB per device", flush=True)
    result = write_summary()
    print_summary(result)
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--summary"]:  # re-summarise the reports already written
        print_summary(write_summary())
    else:
        run(sys.argv[1:] or None)
