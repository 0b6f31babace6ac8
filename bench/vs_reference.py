"""Side-by-side speed against the PyTorch reference (`make bench-reference`).

Runs `../shared/reference/run.sh BENCH` (the reference's own training loop, timed on this
machine now) and this project's speed bench alternately, in one call: for each pair and each
bench, reference then project. The `lm` bench (bench/lm_pair.py) decomposes one exported LM
on both sides, the reference through its own LM experiment code; it runs in two thread modes,
`one_core` (both sides under `taskset -c 0`) and `default` (each side's own thread count),
because torch's OpenMP threads slow down ~9x when the 2 cores are shared with other jobs.
Writes every pair and the median ratio per bench to bench/results/vs_reference.json. Shared
machines drift 2x within hours, so a ratio is only meaningful between timings taken side by
side; nothing here divides by a stored constant.

    .venv/bin/python bench/vs_reference.py            # 3 pairs, both toy benches
    .venv/bin/python bench/vs_reference.py --pairs 5 --only tms
    .venv/bin/python bench/vs_reference.py --only lm --lm-modes one_core
    python3 bench/vs_reference.py --gpu --pairs 2      # on a GPU machine (bench/gpu_bench.sh)

`--gpu`: both sides on the GPU, written to bench/results/vs_reference_gpu.json. The reference
runs through bench/gpu_reference_run.sh (its toy loops on cuda, its LM code as on the CPU);
this project's runs add their FLOP counts, for MFU against the GPU's nominal dense peak. Matched
precision is fp32 on both sides (torch's default keeps TF32 off for matmuls; this project runs
with JAX_DEFAULT_MATMUL_PRECISION=highest); the `lm` pairs also time this project at JAX's GPU
default (TF32 matmuls), reported beside them and not used in the ratio.

Benches not run keep their previous entries in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import lm_pair

REPO = Path(__file__).resolve().parents[1]
REFERENCE_RUN = REPO.parent / "shared" / "reference" / "run.sh"
OUT = REPO / "bench" / "results" / "vs_reference.json"
OUT_GPU = REPO / "bench" / "results" / "vs_reference_gpu.json"
GPU_REFERENCE_RUN = REPO / "bench" / "gpu_reference_run.sh"
# matched precision on the GPU: fp32 matmuls on both sides (JAX's GPU default is TF32)
FP32 = {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}
TF32 = {"JAX_DEFAULT_MATMUL_PRECISION": "default"}
# nominal dense (no sparsity) peaks, NVIDIA's H100 / H200 datasheets, TFLOP/s
GPU_PEAK_TFLOPS = {
    "H100 SXM / H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
}
# timed steps of this project's side on a GPU, where a step takes milliseconds
GPU_PROJECT_STEPS = {"tms_5-2": 1000, "resid_mlp_1": 200}

# reference bench name -> (this project's bench name, what both run)
BENCHES = {
    "tms": ("tms_5-2", "TMS 5-2 decomposition step, batch 4096, the published loss set"),
    "resid": ("resid_mlp_1", "ResidMLP-1 decomposition step, batch 2048, C = 100 per site"),
    "lm": (
        "lm_pair",
        "LM decomposition step of one exported Llama (3 layers, d_model 128, SP1024, "
        "bench/configs/lm_pair.yaml), 8 x 128 tokens, 9 MLP sites C 256 + layer 1 v C 128, "
        "per-site MLP CI [128], faithfulness + importance minimality + subset stochastic + "
        "subset 1-step PGD (KL), one mask sample",
    ),
}
# lm thread mode -> (command prefix for both sides, reference (steps, skip), project steps):
# default-thread reference steps take ~13 s under load, so fewer of them are timed
LM_MODES = {
    "one_core": (lm_pair.ONE_CORE, (lm_pair.REFERENCE_STEPS, lm_pair.REFERENCE_SKIP), 60),
    "default": ((), (12, 2), 30),
    "gpu": ((), (105, 5), 200),
}
if os.environ.get("PD_LM_GPU_STEPS"):  # "ref_steps,ref_skip,project_steps": a quick dry run
    _r, _k, _p = (int(v) for v in os.environ["PD_LM_GPU_STEPS"].split(","))
    LM_MODES["gpu"] = ((), (_r, _k), _p)
LM_BENCH_NAMES = {"one_core": "lm_pair", "default": "lm_pair_default_threads", "gpu": "lm_pair"}


def reference_s_per_step(bench: str, run_sh: Path = REFERENCE_RUN) -> dict:
    proc = subprocess.run(["bash", str(run_sh), bench], capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"reference run.sh {bench} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def project_s_per_step(bench: str, gpu: bool = False) -> dict:
    """run_bench.py's step time of one bench in a fresh process; on a GPU with its FLOP counts,
    more timed steps and fp32 matmuls (matched to the reference)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            str(REPO / "bench" / "run_bench.py"),
            "--only",
            bench,
            "--results-dir",
            out,
        ]
        cmd += ["--flops", "--steps", str(GPU_PROJECT_STEPS[bench])] if gpu else ["--timing-only"]
        env = {**os.environ, **(FP32 if gpu else {})}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"project bench {bench} failed:\n{proc.stderr[-2000:]}")
        return json.loads((Path(out) / f"{bench}.json").read_text())


def lm_pair_row(i: int, mode: str) -> dict:
    prefix, (ref_steps, skip), ours_steps = LM_MODES[mode]
    gpu = mode == "gpu"
    ref = lm_pair.reference(ref_steps, skip, prefix)
    ours = lm_pair.project(ours_steps, prefix, flops=gpu, env=FP32 if gpu else None)
    extra = {}
    if gpu:
        extra = {
            "reference_device": ref.get("device"),
            "project_device": ours.get("device_kind"),
            **_flop_fields(ours),
        }
        if i == 0:  # JAX's GPU default (TF32 matmuls), once: beside the ratio, not in it
            tf32 = lm_pair.project(ours_steps, prefix, env=TF32)
            extra["project_tf32_s_per_step"] = tf32["s_per_step"]
            extra["project_tf32_tokens_per_s"] = tf32["tokens_per_s"]
    return {
        "pair": i,
        "bench": LM_BENCH_NAMES[mode],
        "mode": mode,
        "reference_s_per_step": ref["s_per_step"],
        "project_s_per_step": ours["s_per_step"],
        "speedup": ref["s_per_step"] / ours["s_per_step"],
        "reference_tokens_per_s": ref["tokens_per_s"],
        "project_tokens_per_s": ours["tokens_per_s"],
        "tokens_per_step": ours["tokens_per_step"],
        "load_avg_1min": os.getloadavg()[0],
        "reference": {k: ref[k] for k in ("reference", "steps", "steps_timed", "torch", "threads")},
        "project": {k: ours[k] for k in ("steps_timed", "compile_s", "final_loss_total")},
        **extra,
    }


def _flop_fields(ours: dict) -> dict:
    """This project's model FLOP rate and its MFU against the nominal fp32 / TF32 peaks."""
    rate = ours.get("gflops_per_s_analytic_matmul")
    if rate is None:
        return {}
    kind = "H100 PCIe" if "PCIe" in str(ours.get("device_kind")) else "H100 SXM / H200"
    peak = GPU_PEAK_TFLOPS[kind]
    return {
        "project_flops_per_step_analytic_matmul": ours["flops_per_step_analytic_matmul"],
        "project_flops_per_step_xla": ours.get("flops_per_step_xla"),
        "project_gflops_per_s": rate,
        "project_mfu_vs_fp32_peak": rate / (peak["fp32"] * 1e3),
        "project_mfu_vs_tf32_peak": rate / (peak["tf32"] * 1e3),
        "peak_used": kind,
    }


def _other_load() -> list[str]:
    """The busiest processes when the bench starts (what else shares the cores)."""
    ps = subprocess.run(
        ["ps", "-eo", "pcpu,comm,args", "--sort=-pcpu"], capture_output=True, text=True
    )
    return [ln.strip()[:160] for ln in ps.stdout.splitlines()[1:6]]


def _nvidia_smi() -> str:
    try:
        proc = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        return "no nvidia-smi"
    return proc.stdout.strip()


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO
    )
    return proc.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--only", choices=sorted(BENCHES), action="append")
    parser.add_argument(
        "--lm-modes", default=None, help="lm thread modes: one_core,default (gpu with --gpu)"
    )
    parser.add_argument("--gpu", action="store_true", help="both sides on the GPU (see above)")
    args = parser.parse_args()
    run_sh = GPU_REFERENCE_RUN if args.gpu else REFERENCE_RUN
    out_path = OUT_GPU if args.gpu else OUT
    lm_pair.REFERENCE_RUN = run_sh
    if not run_sh.exists():
        raise SystemExit(f"no reference at {run_sh} (../shared beside the repo)")
    benches = args.only or list(BENCHES)
    lm_modes = (args.lm_modes or ("gpu" if args.gpu else "one_core,default")).split(",")
    lm_modes = [m for m in lm_modes if m]
    if "lm" in benches:
        lm_pair.prepare()
    uptime_start, other_load = os.getloadavg(), _other_load()
    pairs = []

    def write_results() -> dict:
        """Every pair so far and the medians, written after each round (a timeout keeps them)."""
        summary = {}
        names = [(BENCHES[r][0], BENCHES[r][1]) for r in benches if r != "lm"]
        if "lm" in benches:
            for mode in lm_modes:
                names.append((LM_BENCH_NAMES[mode], f"{BENCHES['lm'][1]}; threads: {mode}"))
        for name, what in names:
            rows = [p for p in pairs if p["bench"] == name]
            summary[name] = {
                "what": what,
                "median_speedup": statistics.median(p["speedup"] for p in rows),
                "min_speedup": min(p["speedup"] for p in rows),
                "max_speedup": max(p["speedup"] for p in rows),
                "median_reference_s_per_step": statistics.median(
                    p["reference_s_per_step"] for p in rows
                ),
                "median_project_s_per_step": statistics.median(
                    p["project_s_per_step"] for p in rows
                ),
            }
            if name.startswith("lm_pair"):
                for side in ("reference", "project"):
                    key = f"{side}_tokens_per_s"
                    summary[name][f"median_{key}"] = statistics.median(p[key] for p in rows)
            for key in ("project_mfu_vs_fp32_peak", "project_tf32_s_per_step"):
                if values := [p[key] for p in rows if key in p]:
                    summary[name][f"median_{key}"] = statistics.median(values)
        previous = json.loads(out_path.read_text()) if out_path.exists() else {}
        kept = {k: v for k, v in previous.get("medians", {}).items() if k not in summary}
        kept_pairs = [p for p in previous.get("pairs", []) if p["bench"] in kept]
        result = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "host_cpu": _cpu(),
            "host_cpu_count": os.cpu_count(),
            "project_commit": _commit(),
            "method": (
                "alternating pairs in one call: reference run.sh (its own optimize loop, per-step "
                "time from two run lengths), then run_bench.py --timing-only (steady-state steps "
                "as the training loop runs them); speedup = reference s/step / project s/step"
            ),
            "medians": {**kept, **summary},
            "pairs": kept_pairs + pairs,
        }
        if kept:
            result["kept_from_previous_run"] = {
                "benches": sorted(kept),
                "timestamp": previous.get("timestamp"),
                "project_commit": previous.get("project_commit"),
            }
        if "lm" in benches:
            result["lm"] = {
                "target": "runs/targets/bench_lm_pair_hf (param-decomp export of "
                "bench/configs/lm_pair_target.yaml)",
                "data": "runs/targets/bench_lm_pair_data/{train,test}.parquet: the project's own "
                f"train windows, {lm_pair.N_DATA_BATCHES} x {lm_pair.BATCH} x {lm_pair.SEQ} tokens",
                "reference_harness": "bench/reference_lm_harness.py via run.sh python (its "
                "lm_decomposition.main, run_experiment, optimize)",
                "modes": {
                    m: {
                        "prefix": list(LM_MODES[m][0]),
                        "reference_steps_skip": LM_MODES[m][1],
                        "project_steps": LM_MODES[m][2],
                    }
                    for m in lm_modes
                },
                "not_matched": lm_pair.LM_MISMATCHES,
                "load_avg_at_start": uptime_start,
                "busiest_processes_at_start": other_load,
            }
        if args.gpu:
            result["gpu"] = {
                "nvidia_smi": _nvidia_smi(),
                "matched_precision": "fp32 matmuls on both sides: torch's default (TF32 off "
                "for matmuls, the reference sets nothing), JAX_DEFAULT_MATMUL_PRECISION=highest",
                "nominal_peak_tflops_dense": GPU_PEAK_TFLOPS,
                "mfu": "this project's analytic matmul FLOPs per step (from the step's jaxpr) / "
                "s per step / the nominal dense peak of the precision named",
                "project_steps": {**GPU_PROJECT_STEPS, "lm_pair": LM_MODES["gpu"][2]},
                "reference_steps": {"tms": "100,1100", "resid": "20,220", "lm": LM_MODES["gpu"][1]},
            }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out_path.relative_to(REPO)}")
        return summary

    for i in range(args.pairs):
        for ref_name in benches:
            if ref_name == "lm":
                for mode in lm_modes:
                    pair = lm_pair_row(i, mode)
                    pairs.append(pair)
                    print(
                        f"pair {i} {pair['bench']:<24} reference {pair['reference_s_per_step']:.3f}"
                        f" s  project {pair['project_s_per_step']:.3f} s  -> "
                        f"{pair['speedup']:.2f}x",
                        flush=True,
                    )
                continue
            ours_name = BENCHES[ref_name][0]
            ref = reference_s_per_step(ref_name, run_sh)
            ours = project_s_per_step(ours_name, args.gpu)
            pair = {
                "pair": i,
                "bench": ours_name,
                "reference_s_per_step": ref["s_per_step"],
                "project_s_per_step": ours["s_per_step"],
                "speedup": ref["s_per_step"] / ours["s_per_step"],
                "load_avg_1min": os.getloadavg()[0],
                "reference": {k: ref[k] for k in ("reference", "steps", "torch", "threads")},
            }
            if args.gpu:
                pair["reference_device"] = ref.get("device_name")
                pair["project_device"] = ours.get("device_kind")
                pair["project_steps_timed"] = ours.get("steps_timed")
                pair.update(_flop_fields(ours))
            pairs.append(pair)
            print(
                f"pair {i} {ours_name:<12} reference {pair['reference_s_per_step']:.5f} s  "
                f"project {pair['project_s_per_step']:.5f} s  -> {pair['speedup']:.2f}x",
                flush=True,
            )
        summary = write_results()
    for name, row in summary.items():
        print(
            f"{name:<12} median {row['median_speedup']:.2f}x "
            f"(range {row['min_speedup']:.2f}-{row['max_speedup']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
