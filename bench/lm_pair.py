"""The `lm` bench of `make bench-reference`: one LM decomposition, reference and project.

Both sides decompose the same model: bench/configs/lm_pair_target.yaml (Shakespeare, SP1024
BPE, 3 layers, d_model 128), pretrained here a few steps and exported with `param-decomp
export` to runs/targets/bench_lm_pair_hf. The project reads that folder back (`target: {hf}`,
bit-exact, its tokenizer.json); the reference loads it with `transformers.LlamaForCausalLM`.
The reference's `load_dataset` reads runs/targets/bench_lm_pair_data/{train,test}.parquet:
the project's own train windows (8 x 128 tokens per batch, `input_ids`), so both see the same
tokens. No network on either side.

Matched on both sides: the sites and their C, the CI function (per-site MLP, one hidden
layer of 128), the four loss terms and their coefficients, batch 8 x 128, one mask sample,
fp32. What cannot match exactly (RNG streams, data order, how each side's loop is timed,
precision defaults) is listed in `LM_MISMATCHES` and written into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the reference's run.sh, or a script with its interface (bench/gpu_reference_run.sh on a GPU)
REFERENCE_RUN = Path(
    os.environ.get("PD_REFERENCE_RUN", REPO.parent / "shared" / "reference" / "run.sh")
)
TARGET_CONFIG = "bench/configs/lm_pair_target.yaml"
CONFIG = "bench/configs/lm_pair.yaml"
TARGET_RUN = REPO / "runs" / "targets" / "bench_lm_pair"
HF_DIR = REPO / "runs" / "targets" / "bench_lm_pair_hf"
DATA_DIR = REPO / "runs" / "targets" / "bench_lm_pair_data"
BATCH, SEQ = 8, 128
N_DATA_BATCHES = 64  # windows in the parquet = 64 x 8 (the reference reshuffles per epoch)
PROJECT_STEPS = 60  # timed steps per side: about a minute each on the 2-core CPU
REFERENCE_STEPS, REFERENCE_SKIP = 40, 5
ONE_CORE = ("taskset", "-c", "0")

LM_MISMATCHES = {
    "precision": "both fp32: the reference's default `autocast_bf16: true` is turned off, since "
    "this project's step runs in fp32 (compute_dtype float32)",
    "pgd_init": "one-step PGD from random sources, shared across the batch, on both sides; "
    "the random draws differ (torch vs jax RNG), not their number or shapes",
    "data_order": "same windows; the reference's DataLoader shuffles them in its own order",
    "ci_function": "reference `shared_mlp` [128] = project `per_site_mlp` [128] (d_in -> 128 "
    "-> GELU -> C per site); init scales follow each side's own rule",
    "lr_schedule": "both cosine from 2e-4, warm-up 0; the faithfulness warm-up is 0 steps on "
    "both (it does not change a step's cost)",
    "importance_minimality": "p 2 -> 0.4 over the run, eps 1e-12, no frequency term on "
    "either side (the reference's `beta: 0`); the reference's LM recipe uses beta 0.1, which "
    "this project expresses as a `frequency` block: left out on both, it costs little",
    "attention": "the reference runs transformers' LlamaForCausalLM (sdpa attention); this "
    "project its own Llama forward on the same weights (logit parity <= 1e-4)",
    "threads": "one_core: both sides under `taskset -c 0` (torch then uses 1 thread, XLA one "
    "core); default: torch 2 OpenMP threads, XLA its own pool. Under the shared load the "
    "reference's 2 OpenMP threads run ~9x slower than 1 (barrier waits when a core is taken), "
    "so one_core is the comparison that measures the code rather than the scheduler",
    "timing": "reference: mean of the steps after the first `skip` of its `optimize` loop "
    "(timestamps from its tqdm iterator; includes its per-step L0 `.item()` syncs and data "
    "loading); project: run_bench.py's steady-state loop (sample + train_step, one sync at "
    "the end, after a compile step and one warm step)",
}


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=REPO)


def prepare() -> None:
    """Pretrain and export the target, and write the parquet windows, once (cached in runs/)."""
    if not (HF_DIR / "model.safetensors").is_file():  # the export alone may travel (GPU)
        if not (TARGET_RUN / "checkpoints").is_dir():
            _run([sys.executable, "-m", "param_decomp.cli", "pretrain", TARGET_CONFIG])
        _run([sys.executable, "-m", "param_decomp.cli", "export", str(TARGET_RUN), str(HF_DIR)])
    if (DATA_DIR / "test.parquet").is_file():
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO / "bench"))
    from bench_common import batch_sampler, load_config, open_session

    cfg = load_config(CONFIG, batch_size=BATCH)
    sample = batch_sampler(open_session(cfg, CONFIG))
    windows = np.concatenate([np.asarray(sample(i)) for i in range(N_DATA_BATCHES)])
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", windows), ("test", windows[: 4 * BATCH])):
        table = pa.table({"input_ids": pa.array(rows.astype(np.int64).tolist())})
        pq.write_table(table, DATA_DIR / f"{split}.parquet")


def reference(
    steps: int = REFERENCE_STEPS, skip: int = REFERENCE_SKIP, prefix: tuple[str, ...] = ()
) -> dict:
    """The reference's own LM loop on the exported folder (bench/reference_lm_harness.py);
    `prefix` wraps the command (`taskset -c 0` for the one-core mode)."""
    cmd = [
        *prefix,
        "bash",
        str(REFERENCE_RUN),
        "python",
        str(REPO / "bench" / "reference_lm_harness.py"),
        "--model",
        str(HF_DIR),
        "--data",
        str(DATA_DIR),
        "--steps",
        str(steps),
        "--skip",
        str(skip),
        "--batch",
        str(BATCH),
        "--seq",
        str(SEQ),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"reference lm harness failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def project(
    steps: int = PROJECT_STEPS,
    prefix: tuple[str, ...] = (),
    full: bool = False,
    flops: bool = False,
    env: dict[str, str] | None = None,
) -> dict:
    """This project's step on the same folder, in a fresh process (as run_bench.py runs it);
    `full` adds speed_bench's FLOP count, matmul floor and CI-function time (the roofline),
    `flops` the FLOP counts alone (MFU); `env` is added to the child's environment."""
    cmd = (
        [
            *prefix,
            sys.executable,
            str(Path(__file__).resolve()),
            "--project-worker",
            "--steps",
            str(steps),
        ]
        + (["--full"] if full else [])
        + (["--flops"] if flops else [])
    )
    child_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=child_env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"project lm bench failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _project_worker(steps: int, full: bool, flops: bool = False) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from roofline import matmul_peak_gflops
    from speed_bench import SPEED_BENCHES, bench_speed

    SPEED_BENCHES["lm_pair"] = {"config": CONFIG, "batch": BATCH, "lm": True}
    peak = matmul_peak_gflops() if full else 0.0
    result = bench_speed(
        "lm_pair", steps, peak, timing_only=not (full or flops), flops_only=flops and not full
    )
    print(json.dumps(result, default=lambda o: o.model_dump(exclude_none=True)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepare", action="store_true", help="target, export, parquet only")
    parser.add_argument("--project-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help="one reference run")
    parser.add_argument("--full", action="store_true", help="project: FLOPs, matmul floor, CI")
    parser.add_argument("--flops", action="store_true", help="project: FLOP counts (MFU)")
    parser.add_argument("--one-core", action="store_true", help="under `taskset -c 0`")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    if args.project_worker:
        _project_worker(args.steps or PROJECT_STEPS, args.full, args.flops)
        return 0
    prepare()
    prefix = ONE_CORE if args.one_core else ()
    if args.reference:
        print(json.dumps(reference(args.steps or REFERENCE_STEPS, prefix=prefix)))
    elif not args.prepare:
        print(json.dumps(project(args.steps or PROJECT_STEPS, prefix, args.full)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
