"""Side-by-side speed against the PyTorch reference (`make bench-reference`).

Runs `../shared/reference/run.sh BENCH` (the reference's own training loop, timed on this
machine now) and this project's speed bench alternately, in one call: for each pair and each
toy bench, reference then project. Writes every pair and the median ratio per bench to
bench/results/vs_reference.json. Shared machines drift 2x within hours, so a ratio is only
meaningful between timings taken side by side; nothing here divides by a stored constant.

    .venv/bin/python bench/vs_reference.py            # 3 pairs, both toy benches
    .venv/bin/python bench/vs_reference.py --pairs 5 --only tms
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

REPO = Path(__file__).resolve().parents[1]
REFERENCE_RUN = REPO.parent / "shared" / "reference" / "run.sh"
OUT = REPO / "bench" / "results" / "vs_reference.json"

# reference bench name -> (this project's bench name, what both run)
BENCHES = {
    "tms": ("tms_5-2", "TMS 5-2 decomposition step, batch 4096, the published loss set"),
    "resid": ("resid_mlp_1", "ResidMLP-1 decomposition step, batch 2048, C = 100 per site"),
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
    args = parser.parse_args()
    if not REFERENCE_RUN.exists():
        raise SystemExit(f"no reference at {REFERENCE_RUN} (../shared beside the repo)")
    benches = args.only or list(BENCHES)
    pairs = []
    for i in range(args.pairs):
        for ref_name in benches:
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
    for ref_name in benches:
        name, what = BENCHES[ref_name]
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
        "medians": summary,
        "pairs": pairs,
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
