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
  ablation_shakespeare   `param-decomp ablate` effects/s on the same shapes (one program per
                         site, random rows; bench/ablation_bench.py)
  plan_8b                `param-decomp plan` of the 8B-shaped configs on 8 and 64 simulated
                         devices, several layouts and memory levers (bench/plan_layouts.py;
                         a child per layout, minutes each; reports in bench/results/plan/)

Nothing here asserts on time: the numbers are measurements, written as JSON and printed.

The benches live one per file: speed_bench.py (with flop_count.py and roofline.py),
memory_bench.py, harvest_bench.py and plan_layouts.py; bench_common.py holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ablation_bench import ABLATION_BENCH, bench_ablation, print_ablation_line
from bench_common import REPO, RESULTS_DIR, write_result
from harvest_bench import HARVEST_BENCH, bench_harvest, print_harvest_line
from memory_bench import MEMORY_BENCH, bench_memory, print_memory_table
from roofline import matmul_peak_gflops
from speed_bench import SPEED_BENCHES, bench_speed, print_speed_table, set_peak_fractions

PLAN_BENCH = "plan_8b"
ALL_BENCHES = (*SPEED_BENCHES, MEMORY_BENCH, HARVEST_BENCH, ABLATION_BENCH, PLAN_BENCH)


def parse_only(values: list[str] | None) -> list[str]:
    """The benches `--only` names (all when none), refusing an unknown name before any runs."""
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
    args = parser.parse_args(argv)
    os.chdir(REPO)  # config paths and runs/ are relative to the repo root

    names = parse_only(args.only)
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
                set_peak_fractions(result, peak)
            print(f"wrote {write_result(result, out_dir)}")
    memory = bench_memory() if MEMORY_BENCH in names else None
    if memory is not None:
        print(f"wrote {(RESULTS_DIR / f'{MEMORY_BENCH}.json').relative_to(REPO)}")
    harvest = bench_harvest() if HARVEST_BENCH in names else None
    if harvest is not None:
        print(f"wrote {write_result(harvest, out_dir)}")
    ablation = bench_ablation() if ABLATION_BENCH in names else None
    if ablation is not None:
        print(f"wrote {write_result(ablation, out_dir)}")
    print()
    if results:
        print_speed_table(results)
        print()
    if memory is not None:
        print_memory_table(memory)
    if harvest is not None:
        print_harvest_line(harvest)
    if ablation is not None:
        print_ablation_line(ablation)
    if PLAN_BENCH in names:
        # the 8B-shaped plans (bench/plan_layouts.py): a child process per layout, minutes each
        sys.path.insert(0, str(REPO / "bench"))
        import plan_layouts

        plan_layouts.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
