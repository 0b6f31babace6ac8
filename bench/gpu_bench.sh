#!/usr/bin/env bash
# One GPU session's work, prepared as one command for a machine with no network (the device
# tool's H100 / H200): issue 22's GPU bench and issue 23's paper toys that need a GPU.
#   bash bench/gpu_bench.sh OUT_DIR [BENCH_S] [TOYS_S] [TOYS]
# 1. Installs the carried wheels: .whl_pd (this project's dependencies the image lacks, and
#    our versions of flax / optax / orbax / chex / grain) into /tmp/site_pd, .whl_ref (the
#    reference's: pydantic < 2.12, datasets, ...) into /tmp/site_ref. The image's jax (CUDA)
#    and torch (CUDA) are used as they are.
# 2. `vs_reference.py --gpu --pairs 2` (TMS 5-2, ResidMLP-1 and the `lm` pair, both sides on
#    the GPU, fp32 matmuls on both) under a BENCH_S deadline (default 270 s); the JSON is
#    written after every pair, so a deadline keeps the pairs done.
# 3. The paper toys named in TOYS (default: the five not yet run on the CPU) with `param-decomp
#    reproduce`, each in its own process, all at once, fp32 matmuls, under a TOYS_S deadline
#    (default 270 s). SIGTERM at the deadline saves a checkpoint; a second call on the same
#    (warm) machine with BENCH_S=0 resumes them.
# Everything to read comes back packed in OUT_DIR: the bench JSON, logs, the reproduce records
# and each run's CI figure (runs_gpu/...). Copy the records to runs/reproduce/ and re-render
# with `param-decomp reproduce configs/reproduce/paper.yaml --render-only` on the CPU machine.
set -uo pipefail
OUT_DIR=${1:?usage: gpu_bench.sh OUT_DIR [BENCH_S] [TOYS_S] [TOYS]}
BENCH_S=${2:-270}
TOYS_S=${3:-270}
TOYS=${4:-resid_mlp_3,resid_mlp_2,resid_mlp_1,tms_40-10-id,tms_40-10}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
mkdir -p "$OUT_DIR"
started=$(date +%s)

LOG="$OUT_DIR/gpu_bench.log"
source bench/gpu_env.sh
install .whl_ref /tmp/site_ref
export PD_REFERENCE_RUN="$REPO/bench/gpu_reference_run.sh" REF_SITE=/tmp/site_ref

if ((BENCH_S > 0)); then
  log "bench: vs_reference --gpu --pairs 2 (deadline ${BENCH_S} s)"
  timeout -k 10 "$BENCH_S" python3 bench/vs_reference.py --gpu --pairs 2 \
    >"$OUT_DIR/bench.log" 2>&1
  log "bench exit $? ; $(grep -c '^pair' "$OUT_DIR/bench.log") pair rows"
  cp bench/results/vs_reference_gpu.json "$OUT_DIR/" 2>/dev/null || log "no bench JSON"
fi

if ((TOYS_S > 0)); then
  log "paper toys: $TOYS (deadline ${TOYS_S} s, all at once)"
  # several JAX processes share the GPU: no 75 % preallocation each
  export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest
  mkdir -p "$OUT_DIR/toys"
  pids=()
  for name in ${TOYS//,/ }; do
    timeout -s TERM -k 30 "$TOYS_S" python3 -m param_decomp.cli reproduce \
      configs/reproduce/paper.yaml --runs-dir runs_gpu --only "$name" --no-progress \
      --out "runs_gpu/render_$name/paper_toys.md" >"$OUT_DIR/toys/$name.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  log "paper toys done: $(ls runs_gpu/reproduce 2>/dev/null | tr '\n' ' ')"
fi

# pack what comes back (the device tool returns at most 8 files)
tar czf "$OUT_DIR/runs_gpu.tgz" runs_gpu/reproduce runs_gpu/*/figures/causal_importance.png \
  runs_gpu/*/metrics.jsonl runs_gpu/*/eval.json 2>/dev/null
tar czf "$OUT_DIR/logs.tgz" -C "$OUT_DIR" toys bench.log install.log 2>/dev/null
rm -rf "$OUT_DIR/toys" "$OUT_DIR/bench.log" "$OUT_DIR/install.log"
log "packed: $(ls "$OUT_DIR" | tr '\n' ' ')"
