#!/usr/bin/env bash
# Issue 20's flagship on a GPU, prepared as one command for a machine with no network (the
# device tool's H100 / H200):
#   bash bench/gpu_flagship.sh OUT_DIR [DEADLINE_S] [CONFIG]
# Pretrains the flagship's target if runs_gpu has none (configs/targets/shakespeare_sp1024.yaml)
# and decomposes it with the retuned flagship config (default configs/shakespeare_sp1024.yaml),
# fp32 matmuls, under DEADLINE_S (default 420 s). At the deadline SIGTERM saves a checkpoint;
# the same command again on the same (warm) machine resumes it. Carry .whl_pd (see
# gpu_bench.sh). What comes back in OUT_DIR: flagship.tgz (the run's eval.json, metrics.jsonl,
# config and figures, the target's metrics) and the log. On the CPU machine, unpack it and run
# `param-decomp eval runs_gpu/shakespeare_sp1024` only if the figures need redrawing; the
# eval.json already holds the fast tier (carried, ce_unrecovered, L0, alive).
set -uo pipefail
OUT_DIR=${1:?usage: gpu_flagship.sh OUT_DIR [DEADLINE_S] [CONFIG]}
DEADLINE_S=${2:-420}
CONFIG=${3:-configs/shakespeare_sp1024.yaml}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
mkdir -p "$OUT_DIR"
started=$(date +%s)
LOG="$OUT_DIR/gpu_flagship.log"
source bench/gpu_env.sh

export JAX_DEFAULT_MATMUL_PRECISION=highest
name=$(python3 -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['run_name'])" "$CONFIG")
resume=()
[[ -d runs_gpu/$name/checkpoints ]] && resume=(--resume)
log "decompose $CONFIG ${resume[*]} (deadline ${DEADLINE_S} s)"
timeout -s TERM -k 60 "$DEADLINE_S" python3 -m param_decomp.cli decompose "$CONFIG" \
  --runs-dir runs_gpu --no-progress "${resume[@]}" >>"$OUT_DIR/decompose.log" 2>&1
log "decompose exit $? (0 done; 75 or 124: stopped at the deadline, checkpoint saved)"
tail -n 60 "$OUT_DIR/decompose.log" >>"$LOG"
tar czf "$OUT_DIR/flagship.tgz" runs_gpu/"$name"/{eval.json,metrics.jsonl,config.yaml,figures} \
  runs_gpu/targets/*/metrics.jsonl runs_gpu/targets/*/config.yaml 2>/dev/null
log "packed: $(ls "$OUT_DIR" | tr '\n' ' ')"
