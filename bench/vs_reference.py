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
}


def reference_s_per_step(bench: str) -> dict:
    proc = subprocess.run(
        ["bash", str(REFERENCE_RUN), bench], capture_output=True, text=True, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"reference run.sh {bench} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def project_s_per_step(bench: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            str(REPO / "bench" / "run_bench.py"),
            "--only",
            bench,
            "--timing-only",
            "--results-dir",
            out,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"project bench {bench} failed:\n{proc.stderr[-2000:]}")
        return json.loads((Path(out) / f"{bench}.json").read_text())


def lm_pair_row(i: int, mode: str) -> dict:
    prefix, (ref_steps, skip), ours_steps = LM_MODES[mode]
    ref = lm_pair.reference(ref_steps, skip, prefix)
    ours = lm_pair.project(ours_steps, prefix)
    return {
        "pair": i,
        "bench": "lm_pair" if mode == "one_core" else "lm_pair_default_threads",
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
    }


def _other_load() -> list[str]:
    """The busiest processes when the bench starts (what else shares the cores)."""
    ps = subprocess.run(
        ["ps", "-eo", "pcpu,comm,args", "--sort=-pcpu"], capture_output=True, text=True
    )
    return [ln.strip()[:160] for ln in ps.stdout.splitlines()[1:6]]


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
        "--lm-modes", default="one_core,default", help="lm thread modes: one_core,default"
    )
    args = parser.parse_args()
    if not REFERENCE_RUN.exists():
        raise SystemExit(f"no reference at {REFERENCE_RUN} (../shared beside the repo)")
    benches = args.only or list(BENCHES)
    lm_modes = [m for m in args.lm_modes.split(",") if m]
    if "lm" in benches:
        lm_pair.prepare()
    uptime_start, other_load = os.getloadavg(), _other_load()
    pairs = []
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
            ref = reference_s_per_step(ref_name)
            ours = project_s_per_step(ours_name)
            pair = {
                "pair": i,
                "bench": ours_name,
                "reference_s_per_step": ref["s_per_step"],
                "project_s_per_step": ours["s_per_step"],
                "speedup": ref["s_per_step"] / ours["s_per_step"],
                "load_avg_1min": os.getloadavg()[0],
                "reference": {k: ref[k] for k in ("reference", "steps", "torch", "threads")},
            }
            pairs.append(pair)
            print(
                f"pair {i} {ours_name:<12} reference {pair['reference_s_per_step']:.5f} s  "
                f"project {pair['project_s_per_step']:.5f} s  -> {pair['speedup']:.2f}x",
                flush=True,
            )
    summary = {}
    names = [(BENCHES[r][0], BENCHES[r][1]) for r in benches if r != "lm"]
    if "lm" in benches:
        for mode in lm_modes:
            name = "lm_pair" if mode == "one_core" else "lm_pair_default_threads"
            names.append((name, f"{BENCHES['lm'][1]}; threads: {mode}"))
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
            "median_project_s_per_step": statistics.median(p["project_s_per_step"] for p in rows),
        }
        if name.startswith("lm_pair"):
            for side in ("reference", "project"):
                key = f"{side}_tokens_per_s"
                summary[name][f"median_{key}"] = statistics.median(p[key] for p in rows)
    previous = json.loads(OUT.read_text()) if OUT.exists() else {}
    kept = {k: v for k, v in previous.get("medians", {}).items() if k not in summary}
    kept_pairs = [p for p in previous.get("pairs", []) if p["bench"] in kept]
    result = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "host_cpu": _cpu(),
        "host_cpu_count": os.cpu_count(),
        "project_commit": _commit(),
        "method": (
            "alternating pairs in one call: reference run.sh (its own optimize loop, per-step time "
            "from two run lengths), then run_bench.py --timing-only (steady-state steps as the "
            "training loop runs them); speedup = reference s/step / project s/step"
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")
    for name, row in summary.items():
        print(
            f"{name:<12} median {row['median_speedup']:.2f}x "
            f"(range {row['min_speedup']:.2f}-{row['max_speedup']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
